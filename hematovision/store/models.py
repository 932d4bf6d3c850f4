"""The results database: SQLAlchemy 2 typed models (the schema itself is made by Alembic revisions).

Works on SQLite (the embedded demo) and PostgreSQL (production, via psycopg 3).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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
    wbc_per_l: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Results (filled in one transaction when the analysis is stored).
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    n_wbc: Mapped[int | None]
    n_rbc: Mapped[int | None]
    n_platelets: Mapped[int | None]
    max_severity: Mapped[str | None] = mapped_column(String(20))
    analysed_at: Mapped[datetime | None] = mapped_column(index=True)
    report: Mapped[dict[str, Any] | None]
    # Technologist sign-off (issue 7): once set, the slide's results are read-only.
    verified_by: Mapped[str | None] = mapped_column(String(100))
    verified_at: Mapped[datetime | None]

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

    id: Mapped[int] = mapped_column(primary_key=True)
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
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
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
    """Who submitted, read, cancelled or exported what."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(20))
    resource: Mapped[str] = mapped_column(String(300))
    status: Mapped[int]
    remote_addr: Mapped[str | None] = mapped_column(String(64))
