"""Garbage collection on the registry host: the rendered registry-gc.sh, run for real against
Debian's registry binary on the program's own registry config.

`docker` and `systemctl` are stand-ins on PATH that check how they are called and act like the
host would: `docker compose ... up` with the script's override file restarts the real registry
with the override's environment (read-only), `docker compose run ... registry garbage-collect`
runs the real `docker-registry garbage-collect` on the same storage, and
`systemctl reload registry.service` (the unit's ExecReload: `up` without the override) restarts
it read-write. The script runs in a private mount namespace where /etc holds the placed files
and /srv/registry/data is the test's storage, so its rendered paths are used unchanged.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.manifest import REGISTRY_HOST, REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.realstack.clients import with_private_state
from tests.realstack.hostsim import CURL_STATUS, materialize
from tests.realstack.oci import OciImage, build_image

pytestmark = pytest.mark.host

COMPOSE = REGISTRY_HOST.file("compose").path
GC_SCRIPT = REGISTRY_HOST.file("gc_script").path
DATA_DIR = REGISTRY_LAYOUT.data_dir
CONTAINER_CONFIG = "/etc/distribution/config.yml"

REGISTRY_CONTROL = r"""#!/usr/bin/env bash
# Test stand-in: starts and stops the real registry as the container would run it.
set -euo pipefail
pidfile="$GC_TEST_DIR/registry.pid"
stop() {
  if [[ -f "$pidfile" ]]; then
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$pidfile"
  fi
}
case "$1" in
  stop) stop ;;
  running) [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null ;;
  start)
    stop
    readonly_json="${2:-}"
    echo "start readonly=${readonly_json:-off}" >>"$GC_TEST_DIR/registry-starts.log"
    # On a TCP port of its own: the API socket's directory is the containers' (compose volume).
    env -u AWS_CA_BUNDLE REGISTRY_HTTP_NET=tcp REGISTRY_HTTP_ADDR="$GC_TEST_ADDR" \
      REGISTRY_HTTP_SECRET=gc-test \
      REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$GC_TEST_DATA" \
      ${readonly_json:+REGISTRY_STORAGE_MAINTENANCE_READONLY="$readonly_json"} \
      docker-registry serve "$GC_TEST_CONFIG" >>"$GC_TEST_DIR/registry.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 200); do
      curl -s -o /dev/null "http://$GC_TEST_ADDR/v2/" && exit 0
      sleep 0.05
    done
    echo "registry did not start" >&2; exit 1 ;;
esac
"""

DOCKER = r"""#!/usr/bin/env bash
# Test stand-in for `docker`: accepts exactly the calls registry-gc.sh should make.
set -euo pipefail
echo "docker $*" >>"$GC_TEST_DIR/calls.log"
base=(compose --file @COMPOSE@)
unexpected() { echo "UNEXPECTED docker $*" >>"$GC_TEST_DIR/calls.log"; exit 97; }
[[ "${*:1:3}" == "${base[*]}" ]] || unexpected "$@"
shift 3
if [[ "$1" == --file && "${*:3}" == "up --detach --wait --no-deps registry" ]]; then
  readonly_json="$("$GC_TEST_PYTHON" -c '
import sys, yaml

env = yaml.safe_load(open(sys.argv[1]))["services"]["registry"]["environment"]
assert set(env) == {"REGISTRY_STORAGE_MAINTENANCE_READONLY"}, env
print(env["REGISTRY_STORAGE_MAINTENANCE_READONLY"])' "$2")"
  exec registry-control start "$readonly_json"
elif [[ "$*" == "exec -T nginx nginx -c /etc/nginx/registry/nginx.conf -s reload" ]]; then
  exit 0
elif [[ "${*:1:6}" == "run --rm --no-deps -T registry garbage-collect" ]]; then
  shift 6
  args=("$@")
  [[ "${args[-1]}" == @CONTAINER_CONFIG@ ]] || unexpected "config ${args[-1]}"
  unset 'args[-1]'
  if [[ " ${args[*]} " != *" --dry-run "* ]]; then
    if [[ -n "${GC_TEST_HOLD:-}" ]]; then
      touch "$GC_TEST_HOLD.waiting"
      while [[ ! -e "$GC_TEST_HOLD.go" ]]; do sleep 0.05; done
    fi
    [[ -z "${GC_TEST_FAIL:-}" ]] || { echo "garbage-collect: simulated failure" >&2; exit 1; }
  fi
  exec env -u AWS_CA_BUNDLE REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$GC_TEST_DATA" \
    docker-registry garbage-collect "${args[@]}" "$GC_TEST_CONFIG"
else
  unexpected "$@"
fi
"""

SYSTEMCTL = r"""#!/usr/bin/env bash
# Test stand-in for `systemctl`: registry.service is the registry process.
set -euo pipefail
echo "systemctl $*" >>"$GC_TEST_DIR/calls.log"
case "$*" in
  "is-active --quiet registry.service") exec registry-control running ;;
  "reload registry.service") exec registry-control start ;;
  *) echo "UNEXPECTED systemctl $*" >>"$GC_TEST_DIR/calls.log"; exit 97 ;;
esac
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class GcHost:
    workdir: Path
    etc: Path  # the placed /etc files
    data: Path
    env: dict[str, str]
    address: str

    def run_gc(self, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """registry-gc.sh as systemd would start it, with /etc and /srv/registry/data mapped."""
        steps = [
            f"mount -t overlay overlay -o lowerdir={shlex.quote(str(self.etc))}:/etc /etc",
            "mount -t tmpfs tmpfs /srv",
            f"mkdir -p {DATA_DIR}",
            f"mount --bind {shlex.quote(str(self.data))} {DATA_DIR}",
            f"exec {GC_SCRIPT}",
        ]
        (self.workdir / "calls.log").write_text("")
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", " && ".join(steps)],
            env={**self.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def calls(self) -> list[str]:
        return (self.workdir / "calls.log").read_text().splitlines()

    def control(self, *args: str) -> None:
        subprocess.run(["registry-control", *args], env=self.env, check=True, timeout=60)

    def skopeo(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # In a mount namespace of its own, so containers/image's state stays off the machine.
        argv = with_private_state(self.workdir / "skopeo-tmp", ["skopeo", *args])
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(result.stderr)
        return result

    def push(
        self, image: OciImage, repository: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.skopeo(
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            image.reference,
            f"docker://{self.address}/{repository}:{image.tag}",
            check=check,
        )

    def pull_by_digest(self, repository: str, digest: str, destination: Path) -> None:
        self.skopeo(
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{self.address}/{repository}@{digest}",
            f"oci:{destination}:x",
        )

    def blob_path(self, digest: str) -> Path:
        hex_digest = digest.removeprefix("sha256:")
        return self.data / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"

    def status(self, method: str, path: str) -> int:
        """The registry's status code for a `method` request to `path`, straight to its port."""
        result = subprocess.run(
            [*CURL_STATUS, "-X", method, f"http://{self.address}{path}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return int(result.stdout)

    def delete_manifest(self, repository: str, digest: str) -> int:
        return self.status("DELETE", f"/v2/{repository}/manifests/{digest}")

    def read_write(self) -> bool:
        """Whether the registry accepts a new upload (a read-only one answers 405)."""
        return self.status("POST", "/v2/probe/blobs/uploads/") == 202


@pytest.fixture(scope="module")
def program() -> ProgramRun:
    return run_program(overrides={"clientCount": 0})


@pytest.fixture
def gc_host(program: ProgramRun, tmp_path: Path) -> Iterator[GcHost]:
    files = materialize(program, tmp_path / "placed")
    # The storage the script sees at DATA_DIR is what the registry container mounts.
    assert f"{DATA_DIR}:/var/lib/registry" in files.compose["services"]["registry"]["volumes"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("registry-control", REGISTRY_CONTROL),
        (
            "docker",
            DOCKER.replace("@COMPOSE@", COMPOSE).replace("@CONTAINER_CONFIG@", CONTAINER_CONFIG),
        ),
        ("systemctl", SYSTEMCTL),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    address = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "GC_TEST_DIR": str(tmp_path),
        "GC_TEST_ADDR": address,
        "GC_TEST_DATA": str(data),
        "GC_TEST_CONFIG": str(files.host_path(REGISTRY_HOST.file("registry_config").path)),
        "GC_TEST_PYTHON": sys.executable,
    }
    host = GcHost(tmp_path, files.sandbox.upper("/etc"), data, env, address)
    host.control("start")
    try:
        yield host
    finally:
        host.control("stop")


def images(workdir: Path) -> tuple[OciImage, OciImage]:
    """A and B: the same base layer (same seed, size and name), each its own top layer."""
    a = build_image(workdir / "a", "v1", [256 * 1024, 64 * 1024], seed="gc")
    b = build_image(workdir / "b", "v1", [256 * 1024, 96 * 1024], seed="gc")
    assert a.layer_digests[0] == b.layer_digests[0] and a.layer_digests[1] != b.layer_digests[1]
    return a, b


def own_blobs(image: OciImage, other: OciImage) -> dict[str, int]:
    """digest -> size of the blobs only `image` has (manifest, config, its own layers)."""

    def blobs(of: OciImage) -> dict[str, int]:
        found = {}
        for path in (of.layout / "blobs" / "sha256").iterdir():
            found[f"sha256:{path.name}"] = path.stat().st_size
        return found

    theirs = blobs(other)
    return {digest: size for digest, size in blobs(image).items() if digest not in theirs}


def test_gc_frees_the_deleted_images_own_blobs_keeps_the_shared_ones_and_reports_them(
    gc_host: GcHost, tmp_path: Path
) -> None:
    a, b = images(tmp_path / "images")
    gc_host.push(a, "gc/a")
    gc_host.push(b, "gc/b")
    b_only = own_blobs(b, a)
    assert len(b_only) == 3  # manifest, config, top layer
    assert gc_host.delete_manifest("gc/b", b.manifest_digest) == 202
    assert all(gc_host.blob_path(digest).exists() for digest in b_only)  # deleting frees nothing

    late = build_image(tmp_path / "images" / "late", "v1", [32 * 1024], seed="late")
    hold = tmp_path / "hold"
    during: dict[str, object] = {}

    def during_the_window() -> None:
        deadline = time.monotonic() + 120
        while not Path(f"{hold}.waiting").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        during["push"] = gc_host.push(late, "gc/late", check=False)
        during["push_seconds"] = time.monotonic() - started
        gc_host.pull_by_digest("gc/a", a.manifest_digest, tmp_path / "pulled-during")
        during["pulled"] = True
        Path(f"{hold}.go").touch()

    helper = threading.Thread(target=during_the_window)
    helper.start()
    result = gc_host.run_gc(GC_TEST_HOLD=str(hold))
    Path(f"{hold}.go").touch()
    helper.join()
    assert result.returncode == 0, result.stdout + result.stderr

    # During the window: the push failed at once with the registry's read-only answer, the pull
    # worked.
    push = during["push"]
    assert isinstance(push, subprocess.CompletedProcess) and push.returncode != 0
    assert re.search(r"405|not allowed", push.stderr, re.IGNORECASE), push.stderr
    assert float(str(during["push_seconds"])) < 30
    assert during["pulled"] is True

    # B's own blobs are gone; the shared layer and A remain, and A pulls by digest.
    assert not any(gc_host.blob_path(digest).exists() for digest in b_only)
    for digest in (a.manifest_digest, *a.layer_digests):
        assert gc_host.blob_path(digest).exists(), digest
    gc_host.pull_by_digest("gc/a", a.manifest_digest, tmp_path / "pulled-after")

    # The journal says what was freed, and it is exactly B's own blobs.
    output = result.stdout
    freed = re.search(r"registry-gc: freed (\d+) bytes in (\d+) blobs", output)
    assert freed is not None, output
    assert (int(freed.group(1)), int(freed.group(2))) == (sum(b_only.values()), len(b_only))
    assert re.search(r"registry-gc: before: \d+ blobs, \d+ bytes; disk: ", output)
    assert re.search(r"registry-gc: after: \d+ blobs, \d+ bytes; disk: ", output)
    # The dry run is logged first and names what it would delete.
    dry, real = output.index("dry run"), output.index("registry-gc: collecting")
    assert dry < real
    assert all(digest.removeprefix("sha256:") in output[dry:real] for digest in b_only)

    # Read-write again, and the push that failed during the window succeeds now.
    assert gc_host.read_write()
    gc_host.push(late, "gc/late")
    # How the host was driven: read-only by an override, nginx reloaded, dry run, the real run
    # without --delete-untagged (the default), then the unit's reload (read-write).
    calls = [re.sub(r"--file /tmp/\S+\.yaml", "--file OVERRIDE", call) for call in gc_host.calls()]
    compose = f"docker compose --file {COMPOSE}"
    assert calls == [
        "systemctl is-active --quiet registry.service",
        f"{compose} --file OVERRIDE up --detach --wait --no-deps registry",
        f"{compose} exec -T nginx nginx -c /etc/nginx/registry/nginx.conf -s reload",
        f"{compose} run --rm --no-deps -T registry garbage-collect --dry-run {CONTAINER_CONFIG}",
        f"{compose} run --rm --no-deps -T registry garbage-collect {CONTAINER_CONFIG}",
        "systemctl reload registry.service",
    ]
    starts = (gc_host.workdir / "registry-starts.log").read_text().splitlines()
    assert starts[-2:] == ['start readonly={"enabled": true}', "start readonly=off"]


def test_registry_is_read_write_again_when_gc_fails(gc_host: GcHost, tmp_path: Path) -> None:
    a, _ = images(tmp_path / "images")
    gc_host.push(a, "gc/a")
    result = gc_host.run_gc(GC_TEST_FAIL="1")
    assert result.returncode != 0
    assert "simulated failure" in result.stderr
    assert "registry-gc: back to read-write" in result.stdout
    assert "freed" not in result.stdout
    assert gc_host.calls()[-1] == "systemctl reload registry.service"
    assert gc_host.read_write()
    gc_host.pull_by_digest("gc/a", a.manifest_digest, tmp_path / "pulled")


def test_gc_does_nothing_while_the_registry_service_is_stopped(gc_host: GcHost) -> None:
    gc_host.control("stop")
    result = gc_host.run_gc()
    assert result.returncode == 0, result.stderr
    assert "registry.service is not running" in result.stdout
    assert gc_host.calls() == ["systemctl is-active --quiet registry.service"]


@pytest.mark.parametrize(
    ("delete_untagged", "flags"), [(False, "gc_flags=()"), (True, "gc_flags=(--delete-untagged)")]
)
def test_rendered_gc_script_passes_shellcheck_and_takes_delete_untagged_from_config(
    delete_untagged: bool, flags: str, tmp_path: Path
) -> None:
    text = REGISTRY_HOST.file("gc_script").render(
        {"gc_flags": "--delete-untagged" if delete_untagged else ""}
    )
    assert flags in text.splitlines()
    script = tmp_path / "registry-gc.sh"
    script.write_text(text)
    result = subprocess.run(
        ["shellcheck", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_timer_runs_the_service_on_the_configured_schedule() -> None:
    run = run_program(
        overrides={"clientCount": 0, "gcSchedule": "Sun *-*-* 03:00:00", "gcDeleteUntagged": True}
    )
    placed = {
        c.name: c.inputs["stdin"] for c in run.commands() if c.name.startswith("registry-file-gc-")
    }
    assert "OnCalendar=Sun *-*-* 03:00:00\n" in placed["registry-file-gc-timer"]
    assert "Persistent=true\n" in placed["registry-file-gc-timer"]
    assert f"ExecStart={GC_SCRIPT}\n" in placed["registry-file-gc-service"]
    assert "gc_flags=(--delete-untagged)" in placed["registry-file-gc-script"].splitlines()
    default = run_program(overrides={"clientCount": 0})
    timer = next(c for c in default.commands() if c.name == "registry-file-gc-timer")
    assert "OnCalendar=weekly\n" in timer.inputs["stdin"]
