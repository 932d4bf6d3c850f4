"""The white cells a whole slide's two-pass reading has already taken, by centre.

A cell is seen again from a neighbouring candidate or an overlapping chunk (its level-0 box found
again within a µm or two of where it was), so the two-pass path takes a cell only when no cell already
taken lies within a radius (``hemato_model.two_pass.DUPLICATE_UM``). Centres are kept in a grid of
cells one radius wide, so a lookup reads the 3 × 3 grid cells around a point, whatever the number
of cells taken (a census of a large smear takes tens of thousands).
"""

from __future__ import annotations


class TakenCells:
    """Centres (level-0 px) of the cells taken so far; ``near`` is true within ``radius`` px of one."""

    def __init__(self, radius: float) -> None:
        if radius <= 0:
            raise ValueError("radius must be positive")
        self.radius = float(radius)
        self._grid: dict[tuple[int, int], list[tuple[float, float]]] = {}

    def _key(self, x: float, y: float) -> tuple[int, int]:
        return int(x // self.radius), int(y // self.radius)

    def near(self, x: float, y: float) -> bool:
        """Whether a taken centre lies closer than ``radius`` to (x, y)."""
        gx, gy = self._key(x, y)
        r2 = self.radius**2
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for px, py in self._grid.get((gx + dx, gy + dy), ()):
                    if (px - x) ** 2 + (py - y) ** 2 < r2:
                        return True
        return False

    def add(self, x: float, y: float) -> None:
        """Take the cell centred at (x, y)."""
        self._grid.setdefault(self._key(x, y), []).append((x, y))

    def __len__(self) -> int:
        return sum(len(v) for v in self._grid.values())
