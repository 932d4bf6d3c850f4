"""Shared fixtures in the style of Flask's tutorial: settings -> app -> client."""

from __future__ import annotations

from pathlib import Path

import pytest

from hematovision.core.datasets import have_pbc
from hematovision.core.settings import Settings, load_settings


@pytest.fixture(scope="session")
def data_root() -> Path:
    return load_settings().data_root


@pytest.fixture(scope="session")
def real_data(data_root: Path) -> Path:
    if not have_pbc(data_root):
        pytest.skip(f"real PBC images not found under {data_root} (set HEMATOVISION_DATA_ROOT)")
    return data_root


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "import").mkdir()
    return Settings(var_dir=tmp_path / "var", database_url="", broker_url="", import_root=tmp_path / "import")


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    from api.app import create_app
    from hematovision.store.migrate import upgrade

    upgrade(settings)
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["hv_engine"].dispose()


def make_key(app, scope: str = "admin", name: str = "tests") -> str:  # type: ignore[no-untyped-def]
    from hematovision.store.apikeys import create_key

    with app.extensions["hv_sessions"]() as s, s.begin():
        return create_key(s, name, scope)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    """A test client that presents an admin key."""
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = make_key(app)
    return c
