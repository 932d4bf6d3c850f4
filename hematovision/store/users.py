"""People who log in to the review UI: create, verify a password, disable, list.

Passwords are hashed with scrypt (:func:`hashlib.scrypt`, RFC 7914) with a random 16-byte salt; the
parameters are stored with the hash (``scrypt$n$r$p$salt$hash``, base64), so they can be raised
later without invalidating stored hashes. Hashes are compared in constant time
(:func:`hmac.compare_digest`); an unknown username costs the same hash as a known one.

Password guessing is slowed per account: after :data:`MAX_FAILED` wrong passwords (at login or at
a sign-off's re-authentication) the account is locked for :data:`LOCK_MINUTES` minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hematovision.core.access import MAX_FULL_NAME_CHARS, ROLES, clean_name, clean_username
from hematovision.store.models import User, utcnow

#: scrypt cost: N = 2**15, r = 8, p = 1 (32 MiB, tens of milliseconds); OWASP's minimum is 2**17
#: with r = 8 and p = 1 for new systems -- raise N here on servers with the memory to spare.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS = 10, 1024
MAX_FAILED, LOCK_MINUTES = 5, 15


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p + 2**20, dklen=HASH_BYTES
    )


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` of ``password`` with a new random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches the stored hash (constant-time comparison)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


#: Hashed once, on first use: what an unknown username's password is checked against.
_dummy_hash: list[str] = []


def _dummy() -> str:
    if not _dummy_hash:
        _dummy_hash.append(hash_password(secrets.token_urlsafe(16)))
    return _dummy_hash[0]


def check_new_password(password: object) -> str:
    if not isinstance(password, str):
        raise ValueError("password must be text")
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ValueError(f"password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    return password


def create_user(session: Session, username: str, full_name: str, role: str, password: str) -> User:
    """Add a person; ``ValueError`` (with a message fit for the user) for a bad or taken name,
    unknown role or too short a password. The caller commits."""
    username = clean_username(username)
    full_name = clean_name(full_name, "full name", MAX_FULL_NAME_CHARS)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    check_new_password(password)
    if session.execute(select(User.id).where(User.username == username)).first() is not None:
        raise ValueError(f"username {username!r} is taken")
    user = User(username=username, full_name=full_name, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, username: str) -> User | None:
    return session.execute(select(User).where(User.username == username)).scalar_one_or_none()


@dataclass(frozen=True)
class PasswordCheck:
    """The outcome of a password check: ``user`` when it matched (and the account may be used);
    else ``reason`` (for the audit log; people are told only that it failed)."""

    user: User | None
    reason: str | None = None


def verify_password(
    session: Session, user: User | None, password: str, *, now: datetime | None = None
) -> PasswordCheck:
    """Check ``user``'s password, counting failures and locking the account after too many.

    The counters are changed on ``session``; the caller commits them even when the check failed.
    """
    now = now or utcnow()
    if user is None:
        check_password(_dummy(), password)
        return PasswordCheck(None, "unknown username")
    if user.disabled_at is not None:
        check_password(_dummy(), password)
        return PasswordCheck(None, "account disabled")
    if user.locked_until is not None and user.locked_until > now:
        return PasswordCheck(None, "account locked after repeated wrong passwords")
    if not check_password(user.password_hash, password):
        user.failed_logins = (user.failed_logins or 0) + 1
        if user.failed_logins >= MAX_FAILED:
            user.locked_until = now + timedelta(minutes=LOCK_MINUTES)
            user.failed_logins = 0
        return PasswordCheck(None, "wrong password")
    user.failed_logins = 0
    user.locked_until = None
    return PasswordCheck(user)


def authenticate(session: Session, username: str, password: str) -> PasswordCheck:
    """Log-in check of a username and password (see :func:`verify_password`)."""
    check = verify_password(session, find_user(session, username), password)
    if check.user is not None:
        check.user.last_login_at = utcnow()
    return check


def disable_user(session: Session, username: str) -> bool:
    """Disable the account (it can no longer log in, and its open sessions end). False if unknown."""
    user = find_user(session, username)
    if user is None:
        return False
    if user.disabled_at is None:
        user.disabled_at = utcnow()
    return True


def list_users(session: Session) -> Sequence[User]:
    return session.execute(select(User).order_by(User.username)).scalars().all()


def session_fingerprint(user: User) -> str:
    """A short digest of the password hash: part of a login session's id, so that a changed password
    ends the sessions opened with the old one. Not secret-bearing (a hash of a salted hash)."""
    return hashlib.sha256(user.password_hash.encode("ascii")).hexdigest()[:16]
