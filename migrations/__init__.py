"""Alembic environment and revisions (package data: shipped in the wheel, found by importlib.resources)."""
