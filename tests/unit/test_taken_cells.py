"""The two-pass path's record of cells already taken: a cell seen again within the radius is the same
cell; one just beyond it, in any direction and across grid lines, is another."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemato_model.taken_cells import TakenCells


def test_near_within_the_radius_only_in_every_direction() -> None:
    taken = TakenCells(20.0)  # 5 µm at 0.25 µm/px
    taken.add(100.0, 100.0)
    for angle in np.linspace(0, 2 * math.pi, 16, endpoint=False):
        dx, dy = math.cos(angle), math.sin(angle)
        assert taken.near(100 + 19.9 * dx, 100 + 19.9 * dy)
        assert not taken.near(100 + 20.1 * dx, 100 + 20.1 * dy)
    assert len(taken) == 1


def test_agrees_with_a_brute_force_search_across_grid_lines() -> None:
    rng = np.random.default_rng(3)
    taken, points = TakenCells(7.5), []
    for x, y in rng.uniform(0, 200, (300, 2)):
        brute = any((px - x) ** 2 + (py - y) ** 2 < 7.5**2 for px, py in points)
        assert taken.near(x, y) is brute
        if not brute:
            taken.add(x, y)
            points.append((x, y))
    assert len(taken) == len(points) > 50


def test_radius_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TakenCells(0)
