"""API keys: 256-bit random tokens, shown once, stored as SHA-256, each with one scope.

Scopes nest: ``read`` reads results; ``submit`` also submits and cancels; ``admin`` may do all.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from hematovision.store.models import ApiKey, utcnow

SCOPES = ("read", "submit", "admin")
_RANK = {s: i for i, s in enumerate(SCOPES)}
KEY_PREFIX = "hv_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, scope: str) -> str:
    """Store a new key and return it (the only time it is visible)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, prefix=key[:10], key_sha256=hash_key(key), scope=scope))
    return key


def find_key(session: Session, key: str) -> ApiKey | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = session.execute(select(ApiKey).where(ApiKey.key_sha256 == hash_key(key))).scalar_one_or_none()
    if row is None or row.revoked_at is not None or not secrets.compare_digest(row.key_sha256, hash_key(key)):
        return None
    return row


def allows(granted: str, needed: str) -> bool:
    return _RANK.get(granted, -1) >= _RANK[needed]


def revoke_key(session: Session, prefix: str) -> int:
    rows = session.execute(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))).scalars().all()
    for r in rows:
        r.revoked_at = utcnow()
    return len(rows)
