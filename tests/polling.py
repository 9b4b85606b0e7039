"""Waiting for what a real host does in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(
    check: Callable[[], bool], what: str, timeout: float = 15, interval: float = 0.1
) -> None:
    """Wait for `check` (a reload's new workers, a unit come back, a blob stored in the
    background); fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(interval)
