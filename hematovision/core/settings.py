"""HematoVision settings: one object, loaded by entry points and passed in.

Every field can be set from the environment with the ``HEMATOVISION_`` prefix, e.g.
``HEMATOVISION_DATABASE_URL=postgresql+psycopg://127.0.0.1:5432/test``. The defaults are the
embedded demo configuration: a SQLite results database and a broker that needs no server (Kombu's
filesystem transport, a real queue shared by processes on one machine), everything kept under
``var_dir``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The folder holding the installed packages: the checkout for an editable install, else site-packages.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The shipped models are package data of ``hemato_model`` (found by importlib.resources, not by path
#: arithmetic, so a wheel install finds them too). Looking a resource up imports no model code.
MODELS_DIR = Path(str(files("hemato_model") / "models"))
#: The default classifier: 8 PBC classes (v1.2: 160 px input, per-class energy abstention; PBC CC BY
#: 4.0). v1 (128 px, the default until 2026-12-02) and v1.1 stay beside it, opt-in. The blast v2 model adds a ``blast``
#: class learned from a data set whose licence is unverified: research/evaluation only, opt-in with
#: HEMATOVISION_MODEL_DIR (see its model card).
SHIPPED_MODEL_DIR = MODELS_DIR / "wbc-effnetlite0-v1.2"
BLAST_MODEL_DIR = MODELS_DIR / "wbc-blast-effnetlite0-v2"
#: The red-cell morphology classifier (13 Chula RBC-12 classes, MIT; used by the pipeline's prepare
#: stage for the report's ``rbc_morphology`` when HEMATOVISION_RBC_MORPHOLOGY=true).
RBC_MODEL_DIR = MODELS_DIR / "rbc-effnetlite0-v1.1"
#: The learned white-cell detector (centre heat map; CBC/BCCD + TXL-PBC boxes, MIT), used where
#: ``wbc_detector = "learned"``; see its model card and docs/validation.md.
WBC_DETECTOR_DIR = MODELS_DIR / "wbc-detector-v2"
#: The white-cell detectors to choose from (``classical``: colour rules, the default).
WBC_DETECTORS = ("classical", "learned")
#: Platelet detectors (``learned``, the default: loose candidates scored by
#: hemato_model/models/platelet-filter-v1, clumps reported as clumps; ``classical``: the stain rule).
PLATELET_DETECTORS = ("classical", "learned")


def _default_data_root() -> Path:
    """``../shared`` beside the checkout (the lab's shared data), else beside the working dir."""
    beside_checkout = PROJECT_ROOT.parent / "shared"
    if beside_checkout.is_dir():
        return beside_checkout
    return Path("../shared").resolve()


class Settings(BaseSettings):
    """All configuration of one HematoVision installation."""

    model_config = SettingsConfigDict(env_prefix="HEMATOVISION_", extra="ignore")

    var_dir: Path = Field(default=Path("var"), description="Working files: uploads, reports, queue.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite in var_dir.")
    broker_url: str = Field(default="", description="Celery broker; empty = filesystem queue in var_dir.")
    data_root: Path = Field(default_factory=_default_data_root, description="Shared data (../shared).")
    model_dir: Path = Field(default=SHIPPED_MODEL_DIR, description="Classifier model directory.")
    import_root: Path | None = Field(default=None, description="Server-side slide paths must lie below it.")
    default_mpp: float | None = Field(default=None, description="µm/px for slides that state none.")
    wbc_detector: str = Field(
        default="classical",
        description="White-cell detector of `detect` / `evaluate-detection`: classical or learned.",
    )
    platelet_detector: str = Field(
        default="learned",
        description="Platelet detector of the pipeline, `detect` and `evaluate-detection`: classical or learned.",
    )
    wbc_detector_dir: Path = Field(default=WBC_DETECTOR_DIR, description="Learned white-cell detector folder.")
    max_upload_mb: int = Field(default=4096, description="Largest accepted upload, MiB.")
    max_batch_parts: int = Field(default=5000, description="Most files + fields in one multipart submission.")
    max_paths: int = Field(default=1000, ge=1, description="Most server-side paths in one submission.")
    min_wbc: int = Field(default=200, description="Fewer white cells: the differential is insufficient.")
    target_wbc: int = Field(default=200, description="Stop once this many white cells are classified.")
    full_count: bool = Field(default=False, description="Analyse the whole smear, not just target_wbc.")
    task_max_retries: int = Field(default=3, description="Retries of a slide task on transient errors.")
    task_time_limit_s: int = Field(default=3600, description="Hard time limit of one slide task.")
    visibility_timeout_s: int = Field(
        default=7800, description="Redis: an unacknowledged slide is re-delivered after this (> longest task)."
    )
    stale_after_s: int = Field(
        default=300,
        ge=1,
        description="A running job without a heartbeat for this long, or a queued job without a message "
        "in the broker for this long, is re-queued by the reconciler.",
    )
    heartbeat_s: float = Field(default=30.0, gt=0, description="How often a running stage records a heartbeat.")
    reconcile_interval_s: float = Field(
        default=60.0, gt=0, description="How often each worker runs the reconciler (it also runs at start)."
    )
    dispatch_interval_s: float = Field(
        default=5.0, gt=0, description="How often the outbox dispatcher looks for messages not yet in the broker."
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    worker_concurrency: int = 1
    queue_prepare: str = Field(
        default="slides.prepare", description="Queue of the CPU stage: read the slide, find cells, cut crops."
    )
    queue_classify: str = Field(
        default="slides.classify", description="Queue of the GPU stage: classify the white-cell crops."
    )
    queue_report: str = Field(
        default="slides.report", description="Queue of the CPU stage: differential, flags, store the result."
    )
    work_dir: Path | None = Field(
        default=None, description="Crops handed between stages; shared by all workers. Empty = var_dir/work."
    )
    flag_rules: Path | None = Field(default=None, description="Flag-rule TOML; empty = shipped rules.")
    review_vocabulary: Path | None = Field(
        default=None,
        description="Review vocabulary TOML ([[term]] entries) replacing the rules file's; empty = the rules file's.",
    )
    result_codes: Path | None = Field(
        default=None, description="HL7 observation-code (LOINC) map TOML; empty = the shipped result_codes.toml."
    )
    lab_name: str = Field(default="", description="The laboratory's name, printed on slide reports.")
    lab_address: str = Field(default="", description="The laboratory's address, printed on slide reports.")
    lis_host: str = Field(default="", description="LIS MLLP host for HL7 results; empty = no sending.")
    lis_port: int = Field(default=2575, description="LIS MLLP port.")
    lis_send_on_signoff: bool = Field(default=True, description="Queue the HL7 result for the LIS at sign-off.")
    lis_timeout_s: float = Field(default=10.0, description="Seconds to connect and wait for the LIS's ACK.")
    lis_interval_s: float = Field(default=2.0, description="How often the sender looks for unsent LIS messages.")
    lis_application: str = Field(default="", description="MSH-5 receiving application (the LIS), if needed.")
    lis_facility: str = Field(default="", description="MSH-6 receiving facility, if needed.")
    hl7_allow_preliminary: bool = Field(
        default=False,
        description="Allow HL7 messages of unverified slides (result status P); else only signed-off (F).",
    )
    log_format: str = Field(default="text", description="text or json (one JSON object per line).")
    worker_metrics_port: int = Field(default=0, description="Serve a worker's Prometheus metrics here (0 = off).")
    worker_metrics_host: str = Field(
        default="127.0.0.1", description="Address a worker serves its metrics on (with worker_metrics_port)."
    )
    cache_dir: Path | None = Field(
        default=None, description="Where converted backbone weights are cached; empty = ~/.cache/hematovision."
    )
    rbc_morphology: bool = Field(
        default=False,
        description="Classify a sample of red cells (report rbc_morphology, red-cell flags). Opt-in: not yet "
        "validated on scanned slides (docs/validation.md, 'Red-cell morphology in the pipeline').",
    )
    rbc_model_dir: Path = Field(default=RBC_MODEL_DIR, description="Red-cell morphology model directory.")
    auth_required: bool = Field(
        default=True, description="An API key or a login session is required (all but /healthz and the login page)."
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs the review UI's session cookies and CSRF tokens; empty = a random key kept in "
        "var_dir/secret_key (set it when several API processes serve one site).",
    )
    session_hours: float = Field(default=12.0, gt=0, description="A login session ends after this many hours.")
    secure_cookies: bool = Field(default=False, description="Session cookie only over HTTPS (set behind TLS).")

    @field_validator("wbc_detector", "platelet_detector")
    @classmethod
    def _known_detector(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip().lower()
        known = {"wbc_detector": WBC_DETECTORS, "platelet_detector": PLATELET_DETECTORS}[str(info.field_name)]
        if value not in known:
            raise ValueError(f"{info.field_name} must be one of {', '.join(known)}, got {value!r}")
        return value

    @field_validator("cache_dir", "secret_key", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        """An empty ``HEMATOVISION_CACHE_DIR=`` means the default folder (not the working directory),
        an empty ``HEMATOVISION_SECRET_KEY=`` the kept random key."""
        return None if value == "" else value

    @property
    def resolved_var_dir(self) -> Path:
        return self.var_dir.resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_var_dir / 'hematovision.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return self.resolved_var_dir / "broker"

    @property
    def upload_dir(self) -> Path:
        return self.resolved_var_dir / "uploads"

    @property
    def report_dir(self) -> Path:
        return self.resolved_var_dir / "reports"

    @property
    def stage_work_dir(self) -> Path:
        return (self.work_dir or self.resolved_var_dir / "work").resolve()

    def ensure_dirs(self) -> None:
        for d in (self.resolved_var_dir, self.broker_dir, self.upload_dir, self.report_dir, self.stage_work_dir):
            d.mkdir(parents=True, exist_ok=True)


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides (CLI options) on top."""
    # pydantic validates (and converts) each override against its field's type.
    clean: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
