"""The wheel ships what the code reads at run time: templates, static files, the flag rules, the
shipped models, the Alembic revisions and ``alembic.ini``; installed on its own (no checkout beside
it), it migrates a database and serves the review UI."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools, pinned in requirements-dev.lock) is already
    # in the environment, so the test needs no network.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
        timeout=600,
    )
    wheels = list(out.glob("hematovision-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [
        "api/templates/base.html",
        "api/templates/slide.html",
        "api/static/hv.css",
        "api/static/review.js",
        "api/static/boot.js",
        "migrations/env.py",
        "migrations/alembic.ini",
        "migrations/script.py.mako",
        "migrations/versions/0001_initial_schema.py",
        "hematovision/core/flag_rules.toml",
        "hemato_model/models/wbc-effnetlite0-v1/model.keras",
        "hemato_model/models/wbc-effnetlite0-v1/model.json",
        "hemato_model/models/wbc-effnetlite0-v1.2/model.keras",
        "hemato_model/models/wbc-effnetlite0-v1.2/model.json",
        "hemato_model/models/wbc-effnetlite0-v1.2/ood.json",
        "hematovision/devtools/sample_cells/ATTRIBUTION.md",
        "hematovision/devtools/sample_cells/manifest.csv",
        "hematovision/devtools/sample_cells/lymphocyte/LY_112097.jpg",
    ]
    missing = [n for n in expected if n not in names]
    assert missing == [], f"not in {wheel.name}: {missing}"
    sample = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "hematovision/devtools/sample_cells").glob("*/*.jpg")
    )
    assert len(sample) == 320 and [n for n in sample if n not in names] == []
    revisions = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert [n for n in revisions if f"migrations/versions/{n}" not in names] == []


def test_installed_wheel_migrates_and_serves_the_ui(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    script = f"""
import hematovision, api, migrations
from pathlib import Path
assert Path(hematovision.__file__).is_relative_to({str(target)!r}), hematovision.__file__
assert Path(migrations.__file__).is_relative_to({str(target)!r}), migrations.__file__
from hematovision.core.settings import Settings, MODELS_DIR
from hematovision.store.migrate import upgrade
from api.app import create_app
assert MODELS_DIR.is_relative_to({str(target)!r}), MODELS_DIR
s = Settings(var_dir=Path({str(tmp_path / "var")!r}), database_url="", broker_url="")
upgrade(s)
app = create_app(s)
c = app.test_client()
assert c.get("/ui/").status_code == 302  # the review pages need a login
ui = c.get("/ui/login")
assert ui.status_code == 200 and b"HematoVision" in ui.data, ui.status_code
css = c.get("/ui/static/hv.css")
assert css.status_code == 200, css.status_code
from hematovision.devtools.sample_build import SAMPLE_DIR, read_sample
assert SAMPLE_DIR.is_relative_to({str(target)!r}), SAMPLE_DIR
assert len(read_sample()) == 320
print("wheel ok")
"""
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("HEMATOVISION_DATABASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "wheel ok" in run.stdout
