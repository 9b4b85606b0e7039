"""The droplet twin's cached root file system: built once per version of its build script."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-rootfs.sh"
# Everything the build copies into the rootfs: a change to any of them is a new rootfs.
BUILD_INPUTS = (BUILD_SCRIPT, HERE / "twin-volumes", HERE / "twin-volumes.service")
# The only place the tests write outside their temporary directories (override: TWIN_CACHE).
CACHE_ROOT = Path(os.environ.get("TWIN_CACHE", "/var/cache/private-registry-twin"))


def cache_key() -> str:
    digest = hashlib.sha256()
    for path in BUILD_INPUTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_build() -> Path:
    """The cache directory for this build script, built first if it is not there yet (older
    builds are removed: the cache holds one). Builders take turns on a lock file, so two runs
    at once build it once."""
    target = CACHE_ROOT / cache_key()
    lock_path = CACHE_ROOT / ".lock"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "rootfs" / "usr" / "bin" / "systemctl").exists():
            for old in CACHE_ROOT.iterdir():
                if old not in (target, lock_path):
                    subprocess.run(["rm", "-rf", str(old)], check=True)
            subprocess.run(["bash", str(BUILD_SCRIPT), str(target)], check=True, stdout=sys.stderr)
    return target


if __name__ == "__main__":
    print(cached_build())
