"""Red-cell morphology: the 13 classes of the Chula RBC-12 set, crops of labelled red cells.

``data`` (reading fields, scale, crops, the split by field) is light and may be used anywhere;
``train`` and ``evaluate`` are training/evaluation code and are never imported by a worker (an
import-linter contract in ``pyproject.toml`` keeps it so).
"""
