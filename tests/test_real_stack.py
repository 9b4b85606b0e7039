"""Layer 3: the registry host's own files, served by real nginx and a real registry, used by
real clients (skopeo, podman, curl, openssl). See tests/realstack/hostsim.py for the setup."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components.manifest import REGISTRY_LAYOUT
from components.versions import NGINX_WORKER_GID
from tests.harness import ProgramRun, run_program
from tests.realstack.clients import Podman, Skopeo, header_lines
from tests.realstack.hostsim import CURL_STATUS, RegistryHostSim, apply_client_trust, running, sh
from tests.realstack.oci import build_image, layout_digests
from tests.realstack.sandbox import Sandbox

pytestmark = pytest.mark.host

MiB = 1 << 20


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under root with mode, uid, gid and content hash (or link target)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        if path.is_symlink():
            content = "->" + os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = "dir"
        snapshot[str(path.relative_to(root))] = (stat.st_mode, stat.st_uid, stat.st_gid, content)
    return snapshot


@pytest.fixture(scope="module")
def program() -> ProgramRun:
    return run_program(overrides={"users": ["ci", "alice"], "clientCount": 1})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("realstack")


@pytest.fixture(scope="module")
def client_trust(program: ProgramRun, workdir: Path) -> dict[str, object]:
    """The client host's trust script, run twice over a private root."""
    root = workdir / "client-root"
    etc, local_ca = (
        Sandbox(root).upper(path) for path in ("/etc", "/usr/local/share/ca-certificates")
    )
    first = apply_client_trust(program, root)
    after_first = tree_snapshot(etc), tree_snapshot(local_ca)
    second = apply_client_trust(program, root)
    after_second = tree_snapshot(etc), tree_snapshot(local_ca)
    return {"root": root, "runs": first + second, "first": after_first, "second": after_second}


@pytest.fixture(scope="module")
def sim(
    program: ProgramRun, workdir: Path, client_trust: dict[str, object]
) -> Iterator[RegistryHostSim]:
    host = RegistryHostSim(program, workdir / "host")
    host.set_client_etc(Sandbox(Path(str(client_trust["root"]))).upper("/etc"))
    with running(host):
        yield host


@pytest.fixture(scope="module")
def skopeo(sim: RegistryHostSim, workdir: Path) -> Skopeo:
    return Skopeo.logged_in(sim, workdir / "skopeo")


def curl(
    sim: RegistryHostSim, *args: str, trusted: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return sim.client("curl", "-sS", "--max-time", "10", *args, trusted=trusted, check=False)


# -- the client host's trust script ----------------------------------------------------------
def test_client_trust_script_installs_ca_and_hosts_entry(
    program: ProgramRun, client_trust: dict[str, object]
) -> None:
    for result in client_trust["runs"]:  # type: ignore[attr-defined]
        assert result.returncode == 0, result.stderr.decode()
    root = Path(str(client_trust["root"]))
    name, port = program.outputs["registryAddress"].rsplit(":", 1)
    ca = program.outputs["caCertificatePem"]
    etc = Sandbox(root).upper("/etc")
    assert (etc / f"docker/certs.d/{name}:{port}/ca.crt").read_text() == ca
    assert (etc / f"containers/certs.d/{name}:{port}/ca.crt").read_text() == ca
    system_ca = f"/usr/local/share/ca-certificates/private-registry-{name}.crt"
    assert Sandbox(root).upper(system_ca).read_text() == ca
    assert ca.strip() in (etc / "ssl/certs/ca-certificates.crt").read_text()
    hosts = (etc / "hosts").read_text().splitlines()
    expected = f"{program.outputs['registryPrivateIp']} {name} # private-registry {name}"
    assert hosts.count(expected) == 1


def test_client_trust_script_second_run_changes_nothing(client_trust: dict[str, object]) -> None:
    assert client_trust["first"] == client_trust["second"]
    second_run_output = client_trust["runs"][3].stdout.decode()  # type: ignore[index]
    assert "trusted the CA" not in second_run_output
    assert "mapping" not in second_run_output


# -- login and push/pull ---------------------------------------------------------------------
def test_every_generated_user_can_log_in(sim: RegistryHostSim, skopeo: Skopeo) -> None:
    assert set(sim.passwords) == {"ci", "alice"}
    for user in sim.passwords:
        result = skopeo.login(user)
        assert b"Login Succeeded" in result.stdout


def test_skopeo_push_then_pull_returns_same_manifest_and_layers(
    sim: RegistryHostSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(workdir / "multi", "v1", [1 * MiB, 64 * 1024, 3 * MiB], seed="multi")
    pushed = skopeo.push(image, "team/multi", "ci")
    assert pushed == image.manifest_digest
    assert skopeo.raw_manifest_digest("team/multi", "v1", "alice") == image.manifest_digest
    manifest, layers = skopeo.pull("team/multi", "v1", "alice", workdir / "multi-pulled")
    assert manifest == image.manifest_digest
    assert layers == image.layer_digests


def test_docker_config_json_outputs_are_working_auth_files(
    program: ProgramRun, sim: RegistryHostSim, workdir: Path
) -> None:
    """What a Kubernetes pull secret or a CI job is given, used as is (no login first)."""
    client = Skopeo(sim, workdir / "dockerconfigjson")
    for user, config in program.outputs["dockerConfigJson"].items():
        client.authfile(user).write_text(config)
        client.authfile(user).chmod(0o600)
    image = build_image(workdir / "pull-secret", "v1", [64 * 1024], seed="dockerconfigjson")
    assert client.push(image, "team/pull-secret", "ci") == image.manifest_digest
    assert client.raw_manifest_digest("team/pull-secret", "v1", "alice") == image.manifest_digest


def test_podman_login_push_pull_roundtrip(sim: RegistryHostSim, workdir: Path) -> None:
    podman = Podman(sim, workdir / "podman")
    try:
        podman_roundtrip(podman, sim, workdir)
    finally:
        podman.close()


def podman_roundtrip(podman: Podman, sim: RegistryHostSim, workdir: Path) -> None:
    image = build_image(workdir / "podman-src", "v1", [2 * MiB, 128 * 1024], seed="podman")
    assert b"Login Succeeded" in podman.login("alice").stdout
    podman("pull", "--quiet", image.reference)
    reference = f"{sim.address}/team/podman:v1"
    image_id = podman("images", "--quiet", "--no-trunc").stdout.decode().split()[0]
    digest_file = workdir / "podman-digest"
    podman(
        "push",
        "--quiet",
        "--authfile",
        str(podman.authfile),
        "--digestfile",
        str(digest_file),
        image_id,
        f"docker://{reference}",
    )
    pushed = digest_file.read_text().strip()
    podman("rmi", "--all", "--force")
    podman("pull", "--quiet", "--authfile", str(podman.authfile), reference)
    inspected = podman(
        "image", "inspect", "--format", "{{.Digest}} {{json .RootFS.Layers}}", reference
    ).stdout.decode()
    digest, layers = inspected.split(" ", 1)
    assert digest == pushed
    # podman stores uncompressed layers: their digests are the layout's diff ids.
    assert json.loads(layers) == list(image.diff_ids)


# -- authentication --------------------------------------------------------------------------
def status_as(
    sim: RegistryHostSim, user: str, password: str, url: str
) -> subprocess.CompletedProcess[bytes]:
    """curl's status code for `url` as `user` (the credentials on stdin, `-K -`)."""
    return sim.client(
        *CURL_STATUS, "-K", "-", url, input=f'user = "{user}:{password}"\n'.encode(), check=False
    )


def test_no_wrong_or_unknown_credentials_get_401_with_basic_challenge(
    sim: RegistryHostSim, skopeo: Skopeo
) -> None:
    url = f"https://{sim.address}/v2/"
    anonymous = curl(sim, "-i", url).stdout.decode()
    assert anonymous.startswith("HTTP/1.1 401")
    assert header_lines(anonymous, "WWW-Authenticate") == [
        'WWW-Authenticate: Basic realm="private registry"'
    ]
    for user, password in (
        ("ci", "not-the-password"),
        ("mallory", sim.passwords["ci"]),
        ("alice", sim.passwords["ci"]),
    ):
        code = curl(sim, "-o", "/dev/null", "-w", "%{http_code}", "-K", "-", url)
        assert code.stdout == b"401"  # sanity: no credentials at all
        result = status_as(sim, user, password, url)
        assert result.stdout == b"401", (user, result.stdout)
    assert skopeo.login("ci", password="wrong", check=False).returncode != 0
    good = status_as(sim, "ci", sim.passwords["ci"], url)
    assert good.stdout == b"200"


def test_api_version_header_appears_exactly_once(sim: RegistryHostSim) -> None:
    url = f"https://{sim.address}/v2/"
    own_401 = curl(sim, "-i", url).stdout.decode()
    proxied = sim.client(
        "curl", "-sS", "-i", "-K", "-", url, input=f'user = "ci:{sim.passwords["ci"]}"\n'.encode()
    ).stdout.decode()
    assert proxied.startswith("HTTP/1.1 200")
    for response in (own_401, proxied):
        assert header_lines(response, "Docker-Distribution-Api-Version") == [
            "Docker-Distribution-Api-Version: registry/2.0"
        ]


# -- deletes (CVE-2026-41888: registries before 3.1.1 delete tags even with deletes off) -----
def delete_request(sim: RegistryHostSim, path: str, credentials: tuple[str, str] | None) -> str:
    """`DELETE https://<registry>/v2/<path>` as a user (password on stdin); the raw response."""
    config = f'user = "{credentials[0]}:{credentials[1]}"\n' if credentials else ""
    return sim.client(
        "curl",
        "-sS",
        "-i",
        "-X",
        "DELETE",
        "-K",
        "-",
        f"https://{sim.address}/v2/{path}",
        input=config.encode(),
        check=False,
    ).stdout.decode()


def test_delete_by_tag_digest_or_blob_is_denied_for_every_user_and_the_image_still_pulls(
    sim: RegistryHostSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(workdir / "keep", "v1", [256 * 1024], seed="keep")
    assert skopeo.push(image, "team/keep", "ci") == image.manifest_digest
    paths = [
        "team/keep/manifests/v1",
        f"team/keep/manifests/{image.manifest_digest}",
        f"team/keep/blobs/{image.layer_digests[0]}",
    ]
    denied = 0
    for user, password in sim.passwords.items():
        for path in paths:
            response = delete_request(sim, path, (user, password))
            head, _, body = response.partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 403"), (user, path, head)
            assert header_lines(head, "Content-Type") == ["Content-Type: application/json"]
            assert header_lines(head, "Docker-Distribution-Api-Version") == [
                "Docker-Distribution-Api-Version: registry/2.0"
            ]
            assert [error["code"] for error in json.loads(body)["errors"]] == ["DENIED"]
            denied += 1
    assert denied == len(sim.passwords) * len(paths)
    # Bad or missing credentials still get 401: the refusal is for authenticated users only.
    assert delete_request(sim, paths[0], None).startswith("HTTP/1.1 401")
    assert delete_request(sim, paths[0], ("ci", "wrong")).startswith("HTTP/1.1 401")
    manifest, layers = skopeo.pull("team/keep", "v1", "alice", workdir / "keep-pulled")
    assert (manifest, layers) == (image.manifest_digest, image.layer_digests)
    by_digest = sim.client(
        "skopeo",
        "inspect",
        "--raw",
        "--authfile",
        str(skopeo.authfile("ci")),
        f"docker://{sim.address}/team/keep@{image.manifest_digest}",
    )
    assert "sha256:" + hashlib.sha256(by_digest.stdout).hexdigest() == image.manifest_digest


# -- TLS and exposure ------------------------------------------------------------------------
def test_client_without_the_ca_fails_and_with_the_ca_output_succeeds(sim: RegistryHostSim) -> None:
    url = f"https://{sim.address}/v2/"
    resolve = f"{sim.registry_name}:{sim.port}:{sim.registry_ip}"
    untrusted = curl(sim, "--resolve", resolve, url, trusted=False)
    assert untrusted.returncode == 60, untrusted.stderr  # peer certificate cannot be verified
    with_ca = curl(
        sim,
        "--resolve",
        resolve,
        "--cacert",
        str(sim.ca_file),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
        trusted=False,
    )
    assert with_ca.stdout == b"401"


def test_server_chain_verifies_for_the_registry_name(sim: RegistryHostSim) -> None:
    result = sim.verify_tls(sim.registry_name, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Verify return code: 0 (ok)" in result.stdout
    wrong_name = sim.client(
        "openssl",
        "s_client",
        "-connect",
        f"{sim.registry_ip}:{sim.port}",
        "-CAfile",
        str(sim.ca_file),
        "-verify_hostname",
        "other.example",
        "-verify_return_error",
        input=b"",
        check=False,
        trusted=False,
    )
    assert wrong_name.returncode != 0


@pytest.mark.parametrize(
    ("flag", "accepted"),
    [("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)],
)
def test_only_tls_1_2_and_1_3_are_accepted(sim: RegistryHostSim, flag: str, accepted: bool) -> None:
    # SECLEVEL=0 lets this OpenSSL client offer TLS 1.0/1.1, so a refusal is the server's.
    # -brief prints the outcome on stderr, even when s_client exits before a TLS 1.3 ticket.
    result = sim.client(
        "openssl",
        "s_client",
        "-brief",
        "-connect",
        f"{sim.registry_ip}:{sim.port}",
        "-servername",
        sim.registry_name,
        flag,
        "-cipher",
        "DEFAULT@SECLEVEL=0",
        input=b"",
        check=False,
        trusted=False,
    )
    output = result.stderr.decode()
    negotiated = re.search(r"Protocol version: (TLSv[\d.]+)", output)
    established = "CONNECTION ESTABLISHED" in output and negotiated is not None
    assert established == accepted, output
    if accepted:
        assert (
            negotiated is not None
            and negotiated.group(1) == {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[flag]
        )


def test_plain_http_to_the_tls_port_gets_no_registry_data(sim: RegistryHostSim) -> None:
    result = curl(
        sim,
        "-i",
        "-u",
        f"ci:{sim.passwords['ci']}",
        f"http://{sim.registry_ip}:{sim.port}/v2/_catalog",
        trusted=False,
    )
    response = result.stdout.decode()
    assert response.startswith("HTTP/1.1 400")
    assert "repositories" not in response
    assert not header_lines(response, "Docker-Distribution-Api-Version")


def test_registry_debug_port_is_unreachable_from_outside_the_host(sim: RegistryHostSim) -> None:
    port = REGISTRY_LAYOUT.debug_port
    for address in (sim.registry_ip, sim.container_ip):
        result = curl(
            sim, "--connect-timeout", "3", f"http://{address}:{port}/debug/vars", trusted=False
        )
        assert result.returncode in (7, 28), (address, port, result.returncode)
    # Control: the registry does serve there, to the host on the compose network.
    inside = sim.host_exec(*CURL_STATUS, f"http://{sim.container_ip}:{port}/debug/vars")
    assert inside.stdout == b"200"


@pytest.mark.parametrize(
    ("user", "expected"),
    [(f"{NGINX_WORKER_GID}:{NGINX_WORKER_GID}", "200"), ("65534:65534", "000")],
)
def test_the_registry_api_socket_serves_nginxs_workers_and_nobody_else(
    sim: RegistryHostSim, user: str, expected: str
) -> None:
    """In nginx's container (its mounts), as nginx's worker user and as anyone else: the socket
    is read-write for root and nginx's group only (umask 0007, setgid volume directory)."""
    uid, gid = user.split(":")
    result = sh(
        "nsenter",
        "-t",
        str(sim.service_pid(REGISTRY_LAYOUT.nginx_service)),
        "-m",
        "-r",  # the service's own root
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        *CURL_STATUS,
        "--unix-socket",
        REGISTRY_LAYOUT.registry_socket,
        "http://registry/v2/",
        check=False,
    )
    assert result.stdout.decode() == expected, result.stderr.decode()
    if expected == "000":
        assert result.returncode == 7, result.returncode  # could not connect


# -- big and concurrent ----------------------------------------------------------------------
def test_256_mib_layer_pushes_and_pulls_intact_without_request_body_buffering(
    sim: RegistryHostSim, skopeo: Skopeo, workdir: Path
) -> None:
    image = build_image(workdir / "big", "v1", [256 * MiB], seed="big")
    temp_dir = sim.nginx_cache / "nginx" / "client_temp"
    largest_temp_file = 0
    pushing = threading.Event()
    pushing.set()

    def watch_temp_dir() -> None:
        nonlocal largest_temp_file
        while pushing.is_set():
            for path in temp_dir.rglob("*"):
                if path.is_file():
                    largest_temp_file = max(largest_temp_file, path.stat().st_size)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_temp_dir)
    watcher.start()
    try:
        assert skopeo.push(image, "team/big", "ci") == image.manifest_digest
    finally:
        pushing.clear()
        watcher.join()
    assert temp_dir.is_dir(), "nginx did not create its client body temp path"
    assert largest_temp_file == 0
    assert "buffered to a temporary file" not in (sim.logs / "nginx.log").read_text()
    manifest, layers = skopeo.pull("team/big", "v1", "ci", workdir / "big-pulled")
    assert (manifest, layers) == (image.manifest_digest, image.layer_digests)


def test_eight_concurrent_pushes_then_pulls_are_intact(
    sim: RegistryHostSim, skopeo: Skopeo, workdir: Path
) -> None:
    images = [
        build_image(workdir / f"par-{index}", "v1", [3 * MiB, 512 * 1024], seed=f"parallel-{index}")
        for index in range(8)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        pushed = list(
            pool.map(
                lambda item: skopeo.push(item[1], f"parallel/app{item[0]}", "ci"), enumerate(images)
            )
        )
    assert pushed == [image.manifest_digest for image in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        pulled = list(
            pool.map(
                lambda item: skopeo.pull(
                    f"parallel/app{item[0]}", "v1", "alice", workdir / f"par-pulled-{item[0]}"
                ),
                enumerate(images),
            )
        )
    assert pulled == [(image.manifest_digest, image.layer_digests) for image in images]
    assert len({image.manifest_digest for image in images}) == 8
    assert layout_digests(images[0].layout, "v1")[0] == images[0].manifest_digest


# -- the health endpoint a load balancer checks ----------------------------------------------
def healthz(sim: RegistryHostSim) -> tuple[str, bytes]:
    """(status, body) of GET /healthz without credentials, from the client."""
    result = curl(sim, "-o", "-", "-w", "\n%{http_code}", f"https://{sim.address}/healthz")
    body, _, status = result.stdout.rpartition(b"\n")
    return status.decode(), body


def test_healthz_answers_without_credentials_and_follows_the_registry(
    sim: RegistryHostSim,
) -> None:
    assert healthz(sim) == ("200", b"")
    # The debug server's other pages stay out of reach, and /v2/ still asks for credentials.
    for path in ("/debug/health", "/.registry-health", "/healthz/x", "/v2/"):
        status = curl(sim, "-o", "/dev/null", "-w", "%{http_code}", f"https://{sim.address}{path}")
        assert status.stdout.decode() in ("401", "404"), path
    sim.stop_service(REGISTRY_LAYOUT.registry_service)
    try:
        # Within one health check interval (a balancer's are 3 s or more).
        deadline = time.monotonic() + 3
        while healthz(sim)[0] != "503" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert healthz(sim) == ("503", b"unhealthy\n")
    finally:
        sim.start_service(REGISTRY_LAYOUT.registry_service)
        sim.wait_registry()
    assert healthz(sim) == ("200", b"")
