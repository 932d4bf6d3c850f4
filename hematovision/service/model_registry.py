"""The model registry (issue 18): the classifier versions a lab has, where each came from, how it
validated, and which one the workers assign to new slides.

A version is a model directory (``model.keras``, ``model.json``, ``MODEL_CARD.md`` and, once
``hematovision validate-model`` has judged it, ``validation.json``) registered under its
``name:version`` with the SHA-256 of ``model.keras``. At most one version is ``promoted``: the
prepare stage assigns it to each new slide (:func:`assign_model`) and the classify stage loads the
model the slide was assigned, so a promotion reaches the next slides without restarting a worker
and never changes a slide already under way. Every promotion and rollback is appended to
``model_promotions`` (who, when, from, to, why, and the override reason when the validation report
did not allow it). When nothing is promoted yet, the configured model directory
(``HEMATOVISION_MODEL_DIR``, the shipped v1 by default) is registered and promoted on first use.

Plain functions on a Session; the caller owns the transaction. No model code is imported here (the
API lists the registry): a directory is read as files (JSON and a SHA-256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hematovision.core.hashing import sha256_file as sha256_of
from hematovision.store.models import ModelPromotion, ModelVersion, Slide, utcnow

MODEL_FILE, META_FILE, VALIDATION_FILE = "model.keras", "model.json", "validation.json"
PROMOTE, ROLLBACK = "promote", "rollback"
#: Who promotes the configured model directory when the registry has no promoted model.
SYSTEM_ACTOR = "system"
FIRST_USE_REASON = "first use: the configured model directory (HEMATOVISION_MODEL_DIR) while none was promoted"


class RegistryError(ValueError):
    """A registry request that cannot be done (``code`` names why; the message says what to do)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelDir:
    """What a model directory says of itself, as the registry records it."""

    path: Path
    name: str
    version: str
    sha256: str
    parent_name: str | None
    parent_sha256: str | None
    data_sha256: str | None
    validation: dict[str, Any] | None
    validation_path: Path | None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError("bad_model_dir", f"{path}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RegistryError("bad_model_dir", f"{path}: not a JSON object")
    return doc


def _parent(meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """``model.json``'s ``parent`` (or ``base``): ``{"name", "version", "sha256"}`` or ``"name:version"``."""
    parent = meta.get("parent", meta.get("base"))
    if isinstance(parent, dict):
        name = parent.get("name")
        ref = f"{name}:{parent['version']}" if name and parent.get("version") else name
        return (str(ref) if ref else None), (str(parent["sha256"]) if parent.get("sha256") else None)
    if isinstance(parent, str) and parent:
        return parent, None
    return None, None


def _data_sha256(meta: dict[str, Any]) -> str | None:
    found = meta.get("training")
    training: dict[str, Any] = found if isinstance(found, dict) else {}
    data = meta.get("training_data")
    data_doc: dict[str, Any] = data if isinstance(data, dict) else {}
    for value in (
        data_doc.get("manifest_sha256"),
        meta.get("training_data_sha256"),
        meta.get("data_manifest_sha256"),
        training.get("data_sha256"),
        training.get("manifest_sha256"),
    ):
        if value:
            return str(value)
    return None


def read_model_dir(model_dir: str | Path) -> ModelDir:
    """Read a model directory for the registry: identity, SHA-256 of ``model.keras`` (checked
    against ``model.json``'s when it has one), parent, training data hash, validation report.

    Raises:
        RegistryError: not a model directory, unreadable JSON, or a checksum that differs.
    """
    path = Path(model_dir).resolve()
    if not (path / META_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise RegistryError("bad_model_dir", f"{path}: not a model directory (needs {MODEL_FILE} and {META_FILE})")
    meta = _read_json(path / META_FILE)
    missing = [k for k in ("name", "version") if not meta.get(k)]
    if missing:
        raise RegistryError("bad_model_dir", f"{path / META_FILE}: missing {', '.join(missing)}")
    sha = sha256_of(path / MODEL_FILE)
    if meta.get("sha256") and meta["sha256"] != sha:
        raise RegistryError(
            "checksum_mismatch", f"{path / MODEL_FILE}: SHA-256 differs from {META_FILE}'s (corrupt or replaced)"
        )
    validation_path = path / VALIDATION_FILE
    validation = _read_json(validation_path) if validation_path.is_file() else None
    parent_name, parent_sha = _parent(meta)
    return ModelDir(
        path=path,
        name=str(meta["name"]),
        version=str(meta["version"]),
        sha256=sha,
        parent_name=parent_name,
        parent_sha256=parent_sha,
        data_sha256=_data_sha256(meta),
        validation=validation,
        validation_path=validation_path if validation is not None else None,
    )


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME:VERSION`` → (name, version)."""
    name, sep, version = ref.rpartition(":")
    if not sep or not name or not version:
        raise RegistryError(
            "bad_reference", f"{ref!r}: give the model as NAME:VERSION (see `hematovision models list`)"
        )
    return name, version


def ref_of(mv: ModelVersion) -> str:
    return f"{mv.name}:{mv.version}"


def find(session: Session, name: str, version: str) -> ModelVersion | None:
    return session.execute(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    ).scalar_one_or_none()


def get_model(session: Session, ref: str) -> ModelVersion:
    mv = find(session, *parse_ref(ref))
    if mv is None:
        raise RegistryError("unknown_model", f"{ref}: no such model in the registry (register its directory first)")
    return mv


def promoted(session: Session) -> ModelVersion | None:
    """The promoted version (the one new slides get), if any."""
    return session.execute(select(ModelVersion).where(ModelVersion.status == "promoted")).scalar_one_or_none()


def register(session: Session, model_dir: str | Path, actor: str) -> tuple[ModelVersion, bool]:
    """Register a model directory; returns (its version, whether the row is new).

    Registering the same directory again changes nothing but what it may have gained since (its
    validation report, a moved path); a ``name:version`` already registered with another
    ``model.keras`` is refused (a version names one set of weights).
    """
    info = read_model_dir(model_dir)
    mv = find(session, info.name, info.version)
    created = False
    if mv is None:
        try:
            with session.begin_nested():  # a worker may record the same name:version at once
                mv = ModelVersion(name=info.name, version=info.version, sha256=info.sha256)
                session.add(mv)
            created = True
        except IntegrityError:
            mv = find(session, info.name, info.version)
            assert mv is not None
    if mv.sha256 and mv.sha256 != info.sha256:
        raise RegistryError(
            "version_conflict",
            f"{info.name}:{info.version} is registered with model.keras {mv.sha256[:12]}…, "
            f"but {info.path} holds {info.sha256[:12]}…: give the new model its own version",
        )
    mv.sha256 = info.sha256
    mv.path = str(info.path)
    mv.parent_name, mv.parent_sha256, mv.data_sha256 = info.parent_name, info.parent_sha256, info.data_sha256
    mv.validation = info.validation
    mv.validation_path = str(info.validation_path) if info.validation_path else None
    if mv.registered_at is None:
        mv.registered_by, mv.registered_at = actor, utcnow()
    session.flush()
    return mv, created


def verdict(mv: ModelVersion) -> tuple[bool | None, str]:
    """(promotable, why) from the version's validation report; promotable is None without one."""
    report = mv.validation
    if report is None:
        return None, "no validation report (validation.json from `hematovision validate-model`)"
    if report.get("promotable") is True:
        return True, "validation report: promotable"
    dropped = report.get("dropped") or report.get("refusals") or report.get("reasons")
    detail = f" ({json.dumps(dropped, sort_keys=True)[:300]})" if dropped else ""
    return False, f"validation report: not promotable{detail}"


def _switch(
    session: Session,
    target: ModelVersion,
    actor: str,
    action: str,
    reason: str,
    override_reason: str | None = None,
    *,
    retire_current: bool = False,
) -> ModelPromotion:
    current = promoted(session)
    if current is not None:
        current.status = "retired" if retire_current else "registered"
        session.flush()  # the partial unique index allows one promoted row at a time
    target.status = "promoted"
    target.promoted_by, target.promoted_at, target.reason = actor, utcnow(), reason
    entry = ModelPromotion(
        actor=actor,
        action=action,
        from_version_id=current.id if current is not None else None,
        to_version_id=target.id,
        reason=reason,
        override_reason=override_reason,
    )
    session.add(entry)
    try:
        session.flush()
    except IntegrityError:
        raise RegistryError("concurrent_promotion", "another promotion happened at the same time: try again") from None
    return entry


def _check_text(what: str, value: str | None, limit: int) -> str:
    value = (value or "").strip()
    if not value or len(value) > limit or any(ord(ch) < 32 for ch in value):
        raise RegistryError(f"bad_{what}", f"give a {what} of 1..{limit} characters without control characters")
    return value


def promote(session: Session, ref: str, actor: str, reason: str, override_reason: str | None = None) -> ModelPromotion:
    """Promote ``NAME:VERSION``: new slides get it from now on.

    Refused when its validation report is missing or says it is not promotable, unless an
    ``override_reason`` is given (recorded in the history).
    """
    actor, reason = _check_text("actor", actor, 100), _check_text("reason", reason, 2000)
    override = _check_text("override reason", override_reason, 2000) if override_reason is not None else None
    mv = get_model(session, ref)
    if mv.path is None:
        raise RegistryError("not_registered", f"{ref}: known from results only; register its model directory first")
    if mv.status == "promoted":
        raise RegistryError("already_promoted", f"{ref} is already the promoted model")
    ok, why = verdict(mv)
    if not ok and override is None:
        raise RegistryError("not_promotable", f"{ref}: {why}; promote anyway only with an override reason")
    return _switch(session, mv, actor, PROMOTE, reason, override)


def rollback(session: Session, actor: str, reason: str) -> ModelPromotion:
    """Promote again the version that was promoted before the current one (the current one is
    retired). Repeated, it walks further back along the promotions."""
    actor, reason = _check_text("actor", actor, 100), _check_text("reason", reason, 2000)
    current = promoted(session)
    if current is None:
        raise RegistryError("nothing_promoted", "no model is promoted: nothing to roll back")
    last = session.execute(
        select(ModelPromotion)
        .where(ModelPromotion.to_version_id == current.id, ModelPromotion.action == PROMOTE)
        .order_by(ModelPromotion.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if last is None or last.from_version_id is None:
        raise RegistryError("no_previous", f"{ref_of(current)} has no previously promoted model to go back to")
    previous = session.get(ModelVersion, last.from_version_id)
    assert previous is not None
    return _switch(session, previous, actor, ROLLBACK, reason, retire_current=True)


def ensure_promoted(session: Session, fallback_dir: str | Path) -> ModelVersion:
    """The promoted version; when there is none, ``fallback_dir`` is registered and promoted (by
    ``system``), so a new installation starts on its configured model."""
    current = promoted(session)
    if current is not None:
        return current
    mv, _ = register(session, fallback_dir, SYSTEM_ACTOR)
    try:
        with session.begin_nested():  # another worker may promote it at the same moment
            _switch(session, mv, SYSTEM_ACTOR, PROMOTE, FIRST_USE_REASON)
    except RegistryError:
        pass
    current = promoted(session)
    assert current is not None
    return current


def assign_model(session: Session, slide: Slide, fallback_dir: str | Path) -> ModelVersion:
    """The model a slide is analysed with: the one it was assigned already (a re-delivered prepare
    keeps it), else the promoted one, recorded on the slide now."""
    if slide.model_version_id is not None:
        mv = session.get(ModelVersion, slide.model_version_id)
        if mv is not None and mv.path is not None:
            return mv
    mv = ensure_promoted(session, fallback_dir)
    slide.model_version_id = mv.id
    return mv


def next_model_meta(session: Session, fallback_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """The model a slide submitted now would be assigned and its ``model.json``, read without
    registering or promoting anything: the promoted version, or (none promoted yet) the configured
    directory, which the first prepare will promote (:func:`ensure_promoted`).

    Raises:
        RegistryError: the model's directory or its ``model.json`` is not readable here.
    """
    mv = promoted(session)
    if mv is not None:
        return ref_of(mv), _read_json(model_dir_of(mv, fallback_dir) / META_FILE)
    meta = _read_json(Path(fallback_dir) / META_FILE)
    return f"{meta.get('name')}:{meta.get('version')}", meta


def model_dir_of(mv: ModelVersion, fallback_dir: str | Path) -> Path:
    """Where this worker finds a version's directory: its registered path, else the configured
    directory when that holds the same weights (an installation moved to another path).

    Raises:
        RegistryError: neither holds the registered model.
    """
    if mv.path and (Path(mv.path) / META_FILE).is_file():
        return Path(mv.path)
    fallback = Path(fallback_dir)
    if (fallback / META_FILE).is_file():
        meta = _read_json(fallback / META_FILE)
        if (meta.get("name"), str(meta.get("version")), meta.get("sha256")) == (mv.name, mv.version, mv.sha256):
            return fallback
    raise RegistryError("model_missing", f"{ref_of(mv)}: its directory {mv.path} is not readable on this machine")


def version_json(mv: ModelVersion) -> dict[str, Any]:
    """A version as the API and ``models list --json`` show it."""
    promotable, why = verdict(mv)
    iso = lambda t: t.isoformat() + "Z" if t is not None else None  # noqa: E731
    return {
        "id": mv.id,
        "ref": ref_of(mv),
        "name": mv.name,
        "version": mv.version,
        "sha256": mv.sha256,
        "status": mv.status,
        "path": mv.path,
        "parent": {"ref": mv.parent_name, "sha256": mv.parent_sha256} if mv.parent_name or mv.parent_sha256 else None,
        "data_sha256": mv.data_sha256,
        "validation": {"promotable": promotable, "verdict": why, "path": mv.validation_path},
        "registered_by": mv.registered_by,
        "registered_at": iso(mv.registered_at),
        "promoted_by": mv.promoted_by,
        "promoted_at": iso(mv.promoted_at),
        "reason": mv.reason,
        "created_at": iso(mv.created_at),
    }


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def history(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """The latest promotions and rollbacks, newest first."""
    rows = session.scalars(select(ModelPromotion).order_by(ModelPromotion.id.desc()).limit(limit))
    refs = {mv.id: ref_of(mv) for mv in list_versions(session)}
    return [
        {
            "at": p.at.isoformat() + "Z",
            "actor": p.actor,
            "action": p.action,
            "from": refs.get(p.from_version_id) if p.from_version_id is not None else None,
            "to": refs.get(p.to_version_id),
            "reason": p.reason,
            "override_reason": p.override_reason,
        }
        for p in rows
    ]


def registry_json(session: Session) -> dict[str, Any]:
    """The whole registry: versions, the promoted one and the history."""
    current = promoted(session)
    return {
        "promoted": ref_of(current) if current is not None else None,
        "models": [version_json(mv) for mv in list_versions(session)],
        "history": history(session),
    }
