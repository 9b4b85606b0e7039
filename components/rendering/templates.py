"""The files of `files/`: templates filled with `{{name}}` values, and host scripts as they are.

Rendering fails loudly on a missing or an unused value, so a template and its caller cannot
drift apart.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

FILES_DIR = Path(__file__).resolve().parent.parent.parent / "files"
SCRIPTS_DIR = FILES_DIR / "scripts"

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render_template(name: str, **values: object) -> str:
    """Fill `{{key}}` placeholders of `files/<name>`; every placeholder and value must match."""
    text = (FILES_DIR / name).read_text()
    wanted = set(_PLACEHOLDER.findall(text))
    given = set(values)
    if wanted != given:
        raise ValueError(
            f"template {name}: missing values {sorted(wanted - given)}, "
            f"unused values {sorted(given - wanted)}"
        )
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), text)


def script(name: str) -> str:
    """The text of a host script from `files/scripts/`."""
    return (SCRIPTS_DIR / name).read_text()


def sha256_hex(*parts: str) -> str:
    """A digest of several texts (each one delimited, so ("ab", "c") differs from ("a", "bc"))."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
