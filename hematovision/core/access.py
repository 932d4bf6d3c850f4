"""Who may do what: API-key scopes (machines) and person roles (people), and the names they carry.

Two kinds of principal reach the API. **Machines** present an API key; each key has one scope:

========  ===============================================================
scope     actions
========  ===============================================================
read      read results (every GET)
submit    read, submit slides, cancel jobs (the LIS intake key)
review    read, reclassify cells (e.g. a middleware that pre-reviews)
admin     everything a key can do: read, submit, cancel, reclassify
========  ===============================================================

No key can sign a slide off: an electronic signature is a person's act (21 CFR Part 11 style: the
signer is identified, re-enters a password, and the signature records who, when and its meaning).

**People** log in to the review UI (a session); each has one role. Technologists and pathologists
read, reclassify and sign off; an admin may also submit and cancel.

Names shown for principals are length-limited and free of control characters
(:func:`clean_name`), so they are safe to print in a log line, a PDF or an HL7 field.
"""

from __future__ import annotations

import re
import unicodedata

#: The actions the API authorises (each endpoint maps to one).
ACTIONS = ("read", "submit", "cancel", "reclassify", "signoff", "admin")

#: API-key scopes, in the order ``keys create --scope`` lists them.
SCOPES = ("read", "submit", "review", "admin")
SCOPE_ACTIONS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "submit": frozenset({"read", "submit", "cancel"}),
    "review": frozenset({"read", "reclassify"}),
    "admin": frozenset({"read", "submit", "cancel", "reclassify", "admin"}),
}

#: Person roles.
ROLES = ("technologist", "pathologist", "admin")
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "technologist": frozenset({"read", "reclassify", "signoff"}),
    "pathologist": frozenset({"read", "reclassify", "signoff"}),
    "admin": frozenset({"read", "reclassify", "signoff", "submit", "cancel", "admin"}),
}

#: What a sign-off means: printed with every signature (PDF, CSV, JSON, HL7).
SIGNOFF_MEANING = "verified: results reviewed and released"

#: Longest key name and username (both end up in the audit log's ``actor``).
MAX_NAME_CHARS = 64
#: Longest full name of a person (printed as the verifier).
MAX_FULL_NAME_CHARS = 100
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,63}$")
#: Unicode categories refused in names: controls (CR, LF, NUL, ...), format characters (bidi
#: overrides, zero-width), line/paragraph separators, surrogates, private use and unassigned.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def key_may(scope: str, action: str) -> bool:
    """Whether an API key of ``scope`` may carry out ``action``."""
    return action in SCOPE_ACTIONS.get(scope, frozenset())


def role_may(role: str, action: str) -> bool:
    """Whether a person of ``role`` may carry out ``action``."""
    return action in ROLE_ACTIONS.get(role, frozenset())


def clean_name(raw: object, what: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """``raw`` as a display name (NFC, surrounding blanks removed), or ``ValueError`` saying why not.

    Refused: non-strings, empty names, names over ``max_chars`` characters and any control,
    format or separator character (a CR/LF in a name would otherwise start a new HL7 segment or
    log line).
    """
    if not isinstance(raw, str):
        raise ValueError(f"{what} must be text")
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        raise ValueError(f"{what} must not be empty")
    if len(name) > max_chars:
        raise ValueError(f"{what} is too long ({len(name)} characters; at most {max_chars})")
    bad = next((ch for ch in name if unicodedata.category(ch) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        raise ValueError(f"{what} contains a control character (U+{ord(bad):04X})")
    return name


def clean_username(raw: object) -> str:
    """A username: 2-64 of ASCII letters, digits and ``._@-``, starting with a letter or digit."""
    name = clean_name(raw, "username")
    if not USERNAME_RE.match(name):
        raise ValueError(
            "username must be 2-64 characters: letters, digits and . _ @ - (starting with a letter or digit)"
        )
    return name


def printable(raw: object, max_chars: int = MAX_NAME_CHARS) -> str:
    """A best-effort safe rendering of an untrusted name for the audit log (never raises): refused
    characters become ``?`` and the result is cut to ``max_chars``."""
    text = unicodedata.normalize("NFC", str(raw))
    text = "".join("?" if unicodedata.category(ch) in _REFUSED_CATEGORIES else ch for ch in text)
    return text[:max_chars]
