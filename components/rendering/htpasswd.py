"""The htpasswd file nginx checks every request against."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

MIN_SALT_BYTES = 8


def ssha_hash(password: str, salt: bytes) -> str:
    """nginx's salted SHA-1 htpasswd scheme: `{SSHA}` base64(SHA1(password + salt) + salt).

    The passwords are 40 random alphanumerics (about 238 bits), so no hash speed makes a
    brute-force search feasible; the salt defeats precomputed tables. A slow hash (bcrypt cost 10)
    would add nothing for such passwords and costs about 53 ms of nginx worker CPU per request.
    """
    if len(salt) < MIN_SALT_BYTES:
        raise ValueError(f"the salt must be at least {MIN_SALT_BYTES} bytes")
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def htpasswd_file(entries: Iterable[tuple[str, str, bytes]]) -> str:
    """An htpasswd file from (user, password, salt) entries, one line per user, in order."""
    return "".join(f"{user}:{ssha_hash(password, salt)}\n" for user, password, salt in entries)
