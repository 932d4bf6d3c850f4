"""The results database: SQLAlchemy 2 typed models (the schema itself is made by Alembic revisions).

Works on SQLite (the embedded demo) and PostgreSQL (production, via psycopg 3).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


#: The shape of every id ``new_id`` makes (batches, slides, jobs): 32 lowercase hexadecimal digits.
ID_PATTERN = "[0-9a-f]{32}"
#: Cell ids are 64-bit (every red cell of every slide gets a row); the largest one a database holds.
CELL_ID_MAX = 2**63 - 1
#: BIGINT on PostgreSQL; INTEGER on SQLite, whose INTEGER is already 64-bit and only an ``INTEGER
#: PRIMARY KEY`` column autoincrements (a BIGINT one would not).
WIDE_ID = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    """A new batch, slide or job id (a UUID4 as 32 lowercase hex digits: :data:`ID_PATTERN`)."""
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


#: A registered model's status: ``registered`` (known, usable on request), ``promoted`` (the one the
#: workers assign to new slides; at most one), ``retired`` (rolled back from).
MODEL_STATUSES = ("registered", "promoted", "retired")


class ModelVersion(Base):
    """A classifier version (the model registry, :mod:`hematovision.service.model_registry`).

    Rows are also made by the workers for a model that labelled a slide (name, version, SHA-256);
    ``hematovision models register`` fills in the rest. At most one row is ``promoted`` (a partial
    unique index): the model the workers assign to new slides.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        Index(
            "uq_model_versions_one_promoted",
            "status",
            unique=True,
            sqlite_where=text("status = 'promoted'"),
            postgresql_where=text("status = 'promoted'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    #: SHA-256 of ``model.keras``.
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The registry (issue 18): where the model directory is, where it came from, its validation.
    path: Mapped[str | None] = mapped_column(Text)
    parent_name: Mapped[str | None] = mapped_column(String(160))
    parent_sha256: Mapped[str | None] = mapped_column(String(64))
    #: SHA-256 of the training data manifest (``model.json``'s ``training_data_sha256``).
    data_sha256: Mapped[str | None] = mapped_column(String(64))
    validation_path: Mapped[str | None] = mapped_column(Text)
    #: The validation report (``validation.json`` of the model directory, from ``validate-model``).
    validation: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(20), default="registered", server_default=text("'registered'"))
    registered_by: Mapped[str | None] = mapped_column(String(100))
    registered_at: Mapped[datetime | None]
    promoted_by: Mapped[str | None] = mapped_column(String(100))
    promoted_at: Mapped[datetime | None]
    #: Why it was last promoted, rolled back to or retired.
    reason: Mapped[str | None] = mapped_column(Text)


class ModelPromotion(Base):
    """One change of the promoted model (append-only): who, when, from which version to which,
    ``promote`` or ``rollback``, why, and the override reason when the validation report did not
    allow the promotion."""

    __tablename__ = "model_promotions"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(20))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    override_reason: Mapped[str | None] = mapped_column(Text)

    from_version: Mapped[ModelVersion | None] = relationship(foreign_keys=[from_version_id])
    to_version: Mapped[ModelVersion] = relationship(foreign_keys=[to_version_id])


class Batch(Base):
    __tablename__ = "batches"
    #: An Idempotency-Key belongs to the API key that used it: two clients may use the same string.
    __table_args__ = (UniqueConstraint("idempotency_owner", "idempotency_key", name="uq_batches_idempotency"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(default=5)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    #: Who used the key: ``key:<api key id>``, ``anonymous`` (no authentication) or ``legacy``.
    idempotency_owner: Mapped[str | None] = mapped_column(String(40))
    #: SHA-256 of the submission (fields, file names and sizes, paths): the same key with another
    #: body is a conflict, not a duplicate.
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    submitted_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    slides: Mapped[list[Slide]] = relationship(back_populates="batch", order_by="Slide.created_at")


class Slide(Base):
    __tablename__ = "slides"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str | None] = mapped_column(String(50))
    mpp: Mapped[float | None]
    mpp_source: Mapped[str | None] = mapped_column(String(20))
    width: Mapped[int | None]
    height: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The order and patient (issue 15; :class:`hematovision.core.patient.OrderInfo`): from the
    # submission's worklist or ``PATCH /api/v1/slides/<id>`` before sign-off.
    accession: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    assigning_authority: Mapped[str | None] = mapped_column(String(64))
    birth_date: Mapped[date | None]
    age_years: Mapped[float | None]
    sex: Mapped[str | None] = mapped_column(String(1))
    collected_at: Mapped[datetime | None]
    #: The analyser's white-cell count in 10⁹/L (0.1..500), for the absolute-count rules.
    wbc_10e9_per_l: Mapped[float | None]
    # Results (filled in one transaction when the analysis is stored).
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    n_wbc: Mapped[int | None]
    n_rbc: Mapped[int | None]
    n_platelets: Mapped[int | None]
    max_severity: Mapped[str | None] = mapped_column(String(20))
    analysed_at: Mapped[datetime | None] = mapped_column(index=True)
    report: Mapped[dict[str, Any] | None]
    #: The report as the machine made it (before any review), kept unchanged beside ``report``.
    machine_report: Mapped[dict[str, Any] | None]
    # Technologist sign-off (issue 7): once set, the slide's results are read-only.
    verified_by: Mapped[str | None] = mapped_column(String(100))
    verified_at: Mapped[datetime | None]
    # The review workflow (issue 15): ``awaiting_pathologist`` after a first signature that needs a
    # pathologist's second one, ``final`` once released, None while open; the report's version
    # (1, then one more per amendment: the earlier ones are kept in ``report_versions``).
    review_state: Mapped[str | None] = mapped_column(String(30))
    report_version: Mapped[int] = mapped_column(default=1, server_default=text("1"))

    batch: Mapped[Batch] = relationship(back_populates="slides")
    job: Mapped[Job] = relationship(back_populates="slide", uselist=False)
    model_version: Mapped[ModelVersion | None] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_batch_state", "batch_id", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), unique=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(default=0.0)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    #: The stage running or waiting next (prepare, classify, report); None before the first.
    stage: Mapped[str | None] = mapped_column(String(20))
    #: Per stage: {"runs": n, "worker": "host:pid", "seconds": s, ...} of its last run.
    stages: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: Last sign of life: set when a stage is claimed, every few seconds while it runs, when it
    #: finishes and when the job is re-queued. The reconciler re-queues running jobs whose heartbeat
    #: is older than ``stale_after_s``.
    heartbeat_at: Mapped[datetime | None]

    slide: Mapped[Slide] = relationship(back_populates="job")


class OutboxMessage(Base):
    """A stage message to publish to the broker, written in the same transaction as the job state it
    belongs to (transactional outbox). A dispatcher publishes unsent rows and sets ``sent_at``; while
    the broker is away it retries with backoff (``attempts``, ``next_attempt_at``, ``last_error``)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(default=5)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (Index("ix_cells_slide_kind", "slide_id", "kind"),)

    id: Mapped[int] = mapped_column(WIDE_ID, primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))
    x0: Mapped[int]
    y0: Mapped[int]
    x1: Mapped[int]
    y1: Mapped[int]
    score: Mapped[float]
    label: Mapped[str | None] = mapped_column(String(50))
    probability: Mapped[float | None]
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))


class DifferentialEntry(Base):
    __tablename__ = "differential"

    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), primary_key=True)
    class_name: Mapped[str] = mapped_column(String(50), primary_key=True)
    count: Mapped[int]
    percent: Mapped[float]
    ci_low: Mapped[float]
    ci_high: Mapped[float]


class FlagRecord(Base):
    __tablename__ = "flags"
    __table_args__ = (Index("ix_flags_created_severity", "created_at", "severity"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(50))
    severity: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rules_version: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CellReview(Base):
    """One reclassification of a cell by a technologist: who, when, from which label to which."""

    __tablename__ = "cell_reviews"
    __table_args__ = (Index("ix_cell_reviews_slide_at", "slide_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(WIDE_ID, ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    from_label: Mapped[str | None] = mapped_column(String(50))
    to_label: Mapped[str] = mapped_column(String(50))
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key; only its SHA-256 is stored (keys are 256-bit random tokens)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """One attempt, allowed or refused: who tried (``key:<name>``, ``user:<username>`` or
    ``anonymous``; never a key or any part of one), what, on which resource, when, from where, the
    HTTP status and the outcome (``allowed``, ``refused`` for 401/403 and CSRF failures, ``failed``
    for other errors). ``slide_id`` ties the entry to a slide's history (no foreign key: the audit
    outlives what it describes); ``detail`` holds what else was decided (e.g. a reclassification's
    from/to labels, an export's format, a refusal's reason)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_slide_at", "slide_id", "at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(20))
    resource: Mapped[str] = mapped_column(String(300))
    status: Mapped[int]
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(20), server_default=text("'allowed'"))
    slide_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None]


class User(Base):
    """A person who logs in to the review UI (technologist, pathologist or admin).

    ``password_hash`` is ``scrypt$n$r$p$salt$hash`` (see :mod:`hematovision.store.users`); a
    disabled user can neither log in nor use an open session. ``failed_logins`` and
    ``locked_until`` slow password guessing (login and sign-off re-authentication alike).
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
    failed_logins: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    locked_until: Mapped[datetime | None]


class Signature(Base):
    """An electronic signature of a slide's report: who (the user and, as signed, their username,
    full name and role), when, what it means, the reason given for releasing an insufficient
    differential, and the report version it signs. A version has one signature, or two when it needs
    a pathologist's (the first signer's, then the pathologist's); an amendment starts a new version."""

    __tablename__ = "signatures"

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    full_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    meaning: Mapped[str] = mapped_column(String(200))
    signed_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)
    report_version: Mapped[int] = mapped_column(default=1, server_default=text("1"))


class LisMessage(Base):
    """An HL7 result message for the LIS (``lis_outbox``): written when a slide is signed off (or by
    ``hematovision lis send``), sent over MLLP by :mod:`hematovision.service.lis`, retried with
    backoff while the LIS is away (``attempts``, ``next_attempt_at``, ``last_error``); ``sent_at``
    and ``ack`` (the ACK's MSA-1 code and text) once the LIS accepted it."""

    __tablename__ = "lis_outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    control_id: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(index=True)
    ack: Mapped[str | None] = mapped_column(String(200))


class FlagAcknowledgement(Base):
    """A reviewer's acknowledgement of a flag raised on a slide, with their comment: who, when, for
    which report version. Every flag standing at sign-off needs one of the current version; one
    holds while its flag code stays raised (a reclassification that raises a new code needs a new one)."""

    __tablename__ = "flag_acks"
    __table_args__ = (Index("ix_flag_acks_slide_version", "slide_id", "report_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    report_version: Mapped[int] = mapped_column(default=1)
    code: Mapped[str] = mapped_column(String(50))
    comment: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(100))
    full_name: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewComment(Base):
    """A free-text comment on a slide (``cell_id`` None) or on one of its cells: who, when."""

    __tablename__ = "review_comments"
    __table_args__ = (Index("ix_review_comments_slide_at", "slide_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    cell_id: Mapped[int | None] = mapped_column(WIDE_ID, ForeignKey("cells.id", ondelete="CASCADE"))
    report_version: Mapped[int] = mapped_column(default=1)
    text: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(100))
    full_name: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ReportVersion(Base):
    """A released report superseded by an amendment, kept unchanged: the report JSON as it was
    released, its status and verifier, and who amended it, when and why."""

    __tablename__ = "report_versions"
    __table_args__ = (UniqueConstraint("slide_id", "version", name="uq_report_versions_slide_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    version: Mapped[int]
    report: Mapped[dict[str, Any]]
    result_status: Mapped[str] = mapped_column(String(30))
    verified_by: Mapped[str | None] = mapped_column(String(100))
    verified_at: Mapped[datetime | None]
    amended_by: Mapped[str] = mapped_column(String(100))
    amended_at: Mapped[datetime] = mapped_column(default=utcnow)
    amend_reason: Mapped[str] = mapped_column(Text)
