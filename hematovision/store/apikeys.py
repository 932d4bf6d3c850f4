"""API keys (for machines): 256-bit random tokens, shown once, stored as SHA-256, each with one scope.

Scopes (:mod:`hematovision.core.access`): ``read`` reads results; ``submit`` also submits and
cancels (the LIS intake key); ``review`` also reclassifies cells; ``admin`` does all a key can. No
key signs a slide off: that is a person's act. A key is named (who or what uses it: the audit log
shows the name, never the key); names are at most 64 characters, without control characters.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from hematovision.core.access import SCOPES, clean_name, key_may
from hematovision.store.models import ApiKey, utcnow

__all__ = ["KEY_PREFIX", "SCOPES", "allows", "create_key", "find_key", "hash_key", "revoke_key"]
KEY_PREFIX = "hv_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, scope: str) -> str:
    """Store a new key and return it (the only time it is visible). ``ValueError`` for an unknown
    scope or a bad name (empty, over 64 characters, control characters)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    name = clean_name(name, "key name")
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


def allows(scope: str, action: str) -> bool:
    """Whether a key of ``scope`` may carry out ``action`` (see :mod:`hematovision.core.access`)."""
    return key_may(scope, action)


def revoke_key(session: Session, prefix: str) -> int:
    rows = session.execute(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))).scalars().all()
    for r in rows:
        r.revoked_at = utcnow()
    return len(rows)
