"""Who may do what, on the real stack: roles and repository scopes enforced by the rendered nginx
in front of a real registry, driven with skopeo, podman and curl (see tests/realstack).

Users (the `users` setting): `ci` pushes to team/* (and the proof repository), `viewer` pulls
team/*, `ops` is an admin of everything, `teamops` an admin of team/** only, and `alice` is a
plain-list user (push, every repository).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.manifest import REGISTRY_LAYOUT
from tests.harness import ProgramRun, run_program
from tests.realstack.clients import Podman, Skopeo, header_lines
from tests.realstack.hostsim import RegistryHostSim, running, trusting_client_etc
from tests.realstack.oci import OciImage, build_image

pytestmark = pytest.mark.host

USERS = [
    "ci:push:team/*,private-registry/*",
    "viewer:pull:team/*",
    "ops:admin",
    "teamops:admin:team/**",
    "alice",
]
OCI_ACCEPT = ("-H", "Accept: application/vnd.oci.image.manifest.v1+json")


@dataclass
class Response:
    status: int
    head: str
    body: str

    def assert_denied(self, message: str = "") -> None:
        """A registry-style 403: JSON error body with code DENIED, as Docker clients print."""
        assert self.status == 403, (self.status, self.head, self.body)
        assert header_lines(self.head, "Content-Type") == ["Content-Type: application/json"]
        assert header_lines(self.head, "Docker-Distribution-Api-Version") == [
            "Docker-Distribution-Api-Version: registry/2.0"
        ]
        errors = json.loads(self.body)["errors"]
        assert [error["code"] for error in errors] == ["DENIED"], self.body
        assert message in errors[0]["message"], errors[0]["message"]


@dataclass
class Stack:
    sim: RegistryHostSim
    skopeo: Skopeo
    workdir: Path
    team_app: OciImage  # pushed by ops to team/app:v1
    secret_app: OciImage  # pushed by ops to secret/app:v1

    def request(
        self, user: str | None, method: str, path: str, *curl_args: str, password: str | None = None
    ) -> Response:
        """`curl -X METHOD https://<registry>/v2/<path>` as a user (credentials on stdin)."""
        config = ""
        if user is not None:
            secret = self.sim.passwords[user] if password is None else password
            config = f'user = "{user}:{secret}"\n'
        verb = ["-I"] if method == "HEAD" else ["-X", method]  # -X HEAD would wait for a body
        result = self.sim.client(
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "20",
            "--path-as-is",
            *verb,
            "-K",
            "-",
            *curl_args,
            f"https://{self.sim.address}/v2/{path}",
            input=config.encode(),
            check=False,
        )
        raw = result.stdout.decode(errors="replace")  # a blob's bytes are no text
        assert raw.startswith("HTTP/1.1 "), (raw, result.stderr)
        head, _, body = raw.partition("\r\n\r\n")
        return Response(int(head.split()[1]), head, body)

    def layer_links(self, repository: str) -> set[str]:
        """The blobs the registry's own storage links into a repository (what a pull serves)."""
        layers = (
            self.sim.data_path(REGISTRY_LAYOUT.data_dir)
            / "docker/registry/v2/repositories"
            / repository
            / "_layers"
        )
        if not layers.exists():
            return set()
        return {
            f"{algorithm.name}:{blob.name}"
            for algorithm in layers.iterdir()
            for blob in algorithm.iterdir()
            if (blob / "link").exists()
        }

    def docker_ref(self, repository: str, tag: str = "v1") -> str:
        return f"docker://{self.sim.address}/{repository}:{tag}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("access")
    program: ProgramRun = run_program(overrides={"users": USERS, "clientCount": 1})
    sim = RegistryHostSim(program, workdir / "host")
    sim.set_client_etc(trusting_client_etc(program, workdir / "client-root"))
    with running(sim):
        skopeo = Skopeo.logged_in(sim, workdir / "skopeo")
        team_app = build_image(workdir / "team-app", "v1", [64 * 1024, 32 * 1024], seed="team")
        secret_app = build_image(workdir / "secret-app", "v1", [48 * 1024], seed="secret")
        assert skopeo.push(team_app, "team/app", "ops") == team_app.manifest_digest
        assert skopeo.push(secret_app, "secret/app", "ops") == secret_app.manifest_digest
        stack = Stack(sim, skopeo, workdir, team_app, secret_app)
        # The storage reader sees what the pushes linked (so its empty sets below mean empty).
        assert set(team_app.layer_digests) <= stack.layer_links("team/app")
        yield stack


def test_outputs_give_each_users_role_scopes_and_login_command() -> None:
    outputs = run_program(overrides={"users": USERS, "clientCount": 1}).outputs
    assert outputs["userAccess"] == {
        "ci": {"role": "push", "repositories": ["team/*", "private-registry/*"]},
        "viewer": {"role": "pull", "repositories": ["team/*"]},
        "ops": {"role": "admin", "repositories": ["**"]},
        "teamops": {"role": "admin", "repositories": ["team/**"]},
        "alice": {"role": "push", "repositories": ["**"]},
    }
    assert outputs["users"] == ["ci", "viewer", "ops", "teamops", "alice"]
    for user in outputs["users"]:
        command = outputs["dockerLoginCommands"][user]
        assert command.endswith(
            f"docker login registry.internal:5043 --username {user} --password-stdin"
        )
        assert outputs["passwords"][user] not in command
    assert "--username ci " in outputs["dockerLoginCommand"]  # the proof user


# -- skopeo ----------------------------------------------------------------------------------
def test_scoped_push_user_pushes_and_pulls_inside_its_scope(stack: Stack) -> None:
    image = build_image(stack.workdir / "ci-own", "v1", [16 * 1024], seed="ci-own")
    assert stack.skopeo.push(image, "team/ci-own", "ci") == image.manifest_digest
    for user in ("ci", "viewer", "teamops"):
        pulled = stack.skopeo.copy(
            user, stack.docker_ref("team/ci-own"), f"oci:{stack.workdir / f'ci-own-{user}'}:v1"
        )
        assert pulled.returncode == 0, (user, pulled.stderr.decode())


def test_skopeo_outside_a_scope_or_role_is_denied_with_the_registry_message(stack: Stack) -> None:
    # A push starts with HEAD requests for the blobs (a 403 without a body: skopeo prints the
    # status), then POSTs an upload; a pull GETs the manifest: skopeo prints those 403 bodies.
    cases = [
        (
            "ci",
            stack.team_app.reference,
            stack.docker_ref("secret/ci"),
            "failed to read from destination repository secret/ci: 403 (Forbidden)",
        ),
        (
            "ci",
            stack.docker_ref("secret/app"),
            f"oci:{stack.workdir / 'ci-secret'}:v1",
            "no pull access to repository secret/app",
        ),
        (
            "viewer",
            stack.team_app.reference,
            stack.docker_ref("team/viewer"),
            "denied: no push access to repository team/viewer",
        ),
        (
            "viewer",
            stack.docker_ref("secret/app"),
            f"oci:{stack.workdir / 'viewer-secret'}:v1",
            "no pull access to repository secret/app",
        ),
        (
            "teamops",
            stack.docker_ref("secret/app"),
            f"oci:{stack.workdir / 'teamops-secret'}:v1",
            "no pull access to repository secret/app",
        ),
    ]
    for user, source, destination, message in cases:
        result = stack.skopeo.copy(user, source, destination)
        assert result.returncode != 0, (user, source, destination)
        assert message in result.stderr.decode(), (user, result.stderr.decode())
    # Nothing was written.
    for repository in ("secret/ci", "team/viewer"):
        assert stack.request("ops", "GET", f"{repository}/tags/list").status == 404


def test_plain_list_user_pushes_and_pulls_anywhere_but_cannot_delete(stack: Stack) -> None:
    image = build_image(stack.workdir / "alice", "v1", [8 * 1024], seed="alice")
    assert stack.skopeo.push(image, "anywhere/alice", "alice") == image.manifest_digest
    pulled = stack.skopeo.copy(
        "alice", stack.docker_ref("secret/app"), f"oci:{stack.workdir / 'alice-secret'}:v1"
    )
    assert pulled.returncode == 0, pulled.stderr.decode()
    stack.request(
        "alice", "DELETE", f"anywhere/alice/manifests/{image.manifest_digest}"
    ).assert_denied("deletes are for admins")


# -- podman ----------------------------------------------------------------------------------
def test_podman_pull_user_pulls_in_scope_and_is_denied_push_and_other_repositories(
    stack: Stack,
) -> None:
    podman = Podman(stack.sim, stack.workdir / "podman")
    try:
        assert b"Login Succeeded" in podman.login("viewer").stdout
        authfile = str(podman.authfile)
        podman("pull", "--quiet", "--authfile", authfile, f"{stack.sim.address}/team/app:v1")
        denied_pull = podman(
            "pull",
            "--quiet",
            "--authfile",
            authfile,
            f"{stack.sim.address}/secret/app:v1",
            check=False,
        )
        assert denied_pull.returncode != 0
        assert "no pull access to repository secret/app" in denied_pull.stderr.decode()
        denied_push = podman(
            "push",
            "--quiet",
            "--authfile",
            authfile,
            f"{stack.sim.address}/team/app:v1",
            f"docker://{stack.sim.address}/team/podman:v1",
            check=False,
        )
        assert denied_push.returncode != 0
        assert "no push access to repository team/podman" in denied_push.stderr.decode()
    finally:
        podman.close()


# -- curl: every operation per role ----------------------------------------------------------
def test_reads_and_writes_follow_roles_and_scopes(stack: Stack) -> None:
    layer = stack.team_app.layer_digests[0]
    secret_layer = stack.secret_app.layer_digests[0]
    reads = [
        ("GET", "{repo}/tags/list", ()),
        ("GET", "{repo}/manifests/v1", OCI_ACCEPT),
        ("HEAD", "{repo}/manifests/v1", OCI_ACCEPT),
        ("GET", "{repo}/blobs/{layer}", ()),
    ]
    # A new upload is the first step of every push.
    writes = [("POST", "{repo}/blobs/uploads/", ())]
    expected = {  # user -> repositories it may read, and may write
        "ci": ({"team/app"}, {"team/app"}),
        "viewer": ({"team/app"}, set()),
        "ops": ({"team/app", "secret/app"}, {"team/app", "secret/app"}),
        "teamops": ({"team/app"}, {"team/app"}),
        "alice": ({"team/app", "secret/app"}, {"team/app", "secret/app"}),
    }
    checked = 0
    for user, (readable, writable) in expected.items():
        for repo, blob in (("team/app", layer), ("secret/app", secret_layer)):
            for kind, operations, allowed in (
                ("pull", reads, repo in readable),
                ("push", writes, repo in writable),
            ):
                for method, template, extra in operations:
                    response = stack.request(
                        user, method, template.format(repo=repo, layer=blob), *extra
                    )
                    if allowed:
                        assert response.status in (200, 202), (
                            user,
                            method,
                            template,
                            repo,
                            response.head,
                        )
                    elif method == "HEAD":  # no body to a HEAD
                        assert response.status == 403, (user, template, repo)
                    else:
                        response.assert_denied(f"no {kind} access to repository {repo}")
                    checked += 1
    assert checked == 5 * 2 * 5


def test_manifest_put_outside_scope_is_denied(stack: Stack) -> None:
    manifest = (
        stack.team_app.layout
        / "blobs"
        / "sha256"
        / stack.team_app.manifest_digest.removeprefix("sha256:")
    )
    put = (
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        f"@{manifest}",
    )
    stack.request("ci", "PUT", "secret/app/manifests/v2", *put).assert_denied(
        "no push access to repository secret/app"
    )
    stack.request("viewer", "PUT", "team/app/manifests/v2", *put).assert_denied(
        "no push access to repository team/app"
    )
    assert stack.request("ci", "PUT", "team/app/manifests/v2", *put).status == 201


def test_unauthenticated_or_wrong_password_gets_401_even_where_403_would_apply(
    stack: Stack,
) -> None:
    paths = [
        ("GET", "_catalog"),
        ("GET", "secret/app/tags/list"),
        ("POST", "secret/x/blobs/uploads/"),
        ("DELETE", f"team/app/manifests/{stack.team_app.manifest_digest}"),
        ("GET", "secret%2Fapp/tags/list"),
        ("GET", "nothing/here/at/all"),
    ]
    for method, path in paths:
        assert stack.request(None, method, path).status == 401, path
        assert stack.request("ci", method, path, password="wrong").status == 401, path
        assert stack.request("mallory", method, path, password="x").status == 401, path


def test_catalog_is_for_unscoped_admins_only(stack: Stack) -> None:
    response = stack.request("ops", "GET", "_catalog")
    assert response.status == 200
    assert {"team/app", "secret/app"} <= set(json.loads(response.body)["repositories"])
    for user in ("ci", "viewer", "teamops", "alice"):
        stack.request(user, "GET", "_catalog").assert_denied("the catalog is for admins")
        stack.request(user, "GET", "_catalog?n=10").assert_denied("the catalog is for admins")


# -- cross-repository blob mounts --------------------------------------------------------------
# The upload-start requests clients send, from their source:
# - containerd (core/remotes/docker/pusher.go, requestWithMountFrom) and oras-go
#   (registry/remote/url.go, buildRepositoryBlobMountURL): `?mount=<digest>&from=<repo>`, literal;
# - Docker's distribution client, skopeo (containers/image) and regclient: Go's url.Values,
#   keys sorted and values escaped: `?from=team%2Fapp&mount=sha256%3A<hex>`;
# - go-containerregistry (crane): the same plus an `origin` key.
def mount_queries(digest: str, source: str) -> dict[str, str]:
    encoded_digest = digest.replace(":", "%3A")
    encoded_source = source.replace("/", "%2F")
    return {
        "containerd, oras-go": f"mount={digest}&from={source}",
        "docker, skopeo, regclient": f"from={encoded_source}&mount={encoded_digest}",
        "crane": f"from={encoded_source}&mount={encoded_digest}&origin=registry.internal%3A5043",
    }


def test_a_mount_from_a_repository_the_user_may_pull_goes_through_in_every_clients_form(
    stack: Stack,
) -> None:
    team_layer = stack.team_app.layer_digests[0]
    for index, (client, query) in enumerate(mount_queries(team_layer, "team/app").items()):
        target = f"team/mounted{index}"
        response = stack.request("ci", "POST", f"{target}/blobs/uploads/?{query}")
        assert response.status == 201, (client, response.head, response.body)
        assert stack.layer_links(target) == {team_layer}, client
        blob = stack.request("ci", "GET", f"{target}/blobs/{team_layer}")
        assert blob.status == 200 and f"Docker-Content-Digest: {team_layer}" in blob.head, client
    # An admin of every repository mounts from anywhere.
    secret_layer = stack.secret_app.layer_digests[0]
    response = stack.request(
        "ops", "POST", f"team/mounted-by-ops/blobs/uploads/?mount={secret_layer}&from=secret/app"
    )
    assert response.status == 201, response.head
    assert stack.layer_links("team/mounted-by-ops") == {secret_layer}


def test_a_mount_from_a_repository_the_user_may_not_pull_starts_a_plain_upload(
    stack: Stack,
) -> None:
    """Refused mounts become plain uploads (202, as the distribution spec lets a registry
    answer), so clients upload the blob and nothing says whether the source holds it."""
    secret_layer = stack.secret_app.layer_digests[0]
    queries = {
        **mount_queries(secret_layer, "secret/app"),
        "lower-case escape": f"mount={secret_layer}&from=secret%2fapp",
        "encoded key": f"mount={secret_layer}&fr%6Fm=secret%2Fapp",
        "semicolon": f"mount={secret_layer}&x=1;from=secret%2Fapp",
        "upper-case key": f"mount={secret_layer}&FROM=secret%2Fapp",
        "dot segments": f"mount={secret_layer}&from=team%2F..%2Fsecret%2Fapp",
        "forbidden first": f"mount={secret_layer}&from=secret/app&from=team/app",
        "allowed first": f"mount={secret_layer}&from=team/app&from=secret/app",
        "encoded digest key": f"m%6Funt={secret_layer}&from=team/app",
    }
    for user, target in (("ci", "team/loot"), ("teamops", "team/loot-admin")):
        for case, query in queries.items():
            response = stack.request(user, "POST", f"{target}/blobs/uploads/?{query}")
            assert response.status == 202, (user, case, response.head, response.body)
            assert header_lines(response.head, "Docker-Upload-UUID"), (user, case)
        assert stack.layer_links(target) == set(), user
        assert stack.request(user, "HEAD", f"{target}/blobs/{secret_layer}").status == 404


def test_a_form_body_cannot_carry_a_mount_past_the_front(stack: Stack) -> None:
    """The registry reads `mount` and `from` with Go's FormValue, which also parses a
    form-encoded or multipart body: none of these may link the secret layer."""
    secret_layer = stack.secret_app.layer_digests[0]
    team_layer = stack.team_app.layer_digests[0]
    form = f"mount={secret_layer}&from=secret%2Fapp"
    variants: dict[str, tuple[str, list[str]]] = {
        "form-encoded": ("", ["-H", "Content-Type: application/x-www-form-urlencoded"]),
        "upper case with parameters": (
            "",
            ["-H", "Content-Type: APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8"],
        ),
        "chunked": (
            "",
            [
                "-H",
                "Content-Type: application/x-www-form-urlencoded",
                "-H",
                "Transfer-Encoding: chunked",
            ],
        ),
        "two content types": (
            "",
            [
                "-H",
                "Content-Type: text/plain",
                "-H",
                "content-type: application/x-www-form-urlencoded",
            ],
        ),
        # An allowed source in the query, the forbidden one in the body (body values come first).
        "query and body": (
            f"?mount={team_layer}&from=team%2Fapp",
            ["-H", "Content-Type: application/x-www-form-urlencoded"],
        ),
    }
    for user, target in (("ci", "team/form-loot"), ("teamops", "team/form-loot-admin")):
        for case, (query, headers) in variants.items():
            response = stack.request(
                user, "POST", f"{target}/blobs/uploads/{query}", *headers, "--data-binary", form
            )
            # Only the query's mount from team/app may go through (201); the rest start uploads.
            expected = 201 if query else 202
            assert response.status == expected, (user, case, response.head, response.body)
        multipart = stack.request(
            user,
            "POST",
            f"{target}/blobs/uploads/",
            "-F",
            f"mount={secret_layer}",
            "-F",
            "from=secret/app",
        )
        assert multipart.status == 202, (user, multipart.head, multipart.body)
        # Only the query's own, allowed mount may have gone through.
        assert secret_layer not in stack.layer_links(target), user
        assert stack.request(user, "HEAD", f"{target}/blobs/{secret_layer}").status == 404


def test_the_registry_builds_its_urls_from_the_host_nginx_saw(stack: Stack) -> None:
    """Forwarding headers from the client never reach the registry (it builds the upload's
    Location from them); an HTTP/1.0 request without Host gets the registry's own address; the
    registry logs the client's address as nginx saw it."""
    spoofed = [
        "-H",
        "X-Forwarded-Host: evil.example",
        "-H",
        "Forwarded: host=evil.example;proto=http",
        "-H",
        "X-Forwarded-Proto: http",
        "-H",
        "X-Forwarded-For: 203.0.113.66",
    ]
    response = stack.request("ci", "POST", "team/located/blobs/uploads/", *spoofed)
    assert response.status == 202, response.head
    location = header_lines(response.head, "Location")
    assert len(location) == 1 and location[0].startswith(
        f"Location: https://{stack.sim.address}/v2/team/located/blobs/uploads/"
    ), location
    logged = [
        entry
        for entry in stack.sim.registry_requests()
        if entry.get("http.request.uri") == "/v2/team/located/blobs/uploads/"
    ]
    assert logged and "203.0.113.66" not in logged[-1].get("http.request.remoteaddr", ""), logged
    old_client = stack.request(
        "ci", "POST", "team/located-http10/blobs/uploads/", "--http1.0", "-H", "Host:"
    )
    assert old_client.status == 202, (old_client.head, old_client.body)
    assert header_lines(old_client.head, "Location")[0].startswith(
        f"Location: https://{stack.sim.address}/v2/team/located-http10/blobs/uploads/"
    )


def test_encoded_or_unnormalized_paths_cannot_reach_other_repositories(stack: Stack) -> None:
    for path in [
        "secret%2Fapp/tags/list",
        "team/../secret/app/tags/list",
        "team/./app/../../secret/app/tags/list",
        "team//app/tags/list",
        "team/app/tags/list/../../../../secret/app/tags/list",
        "Secret/app/tags/list",
        "team/%61pp/tags/list",
    ]:
        response = stack.request("ci", "GET", path)
        response.assert_denied()
    for path in ["team/app/unknown", "team/app/blobs/not-a-digest", "_ping"]:
        stack.request("ops", "GET", path).assert_denied("this request is not allowed")


# -- deletes ---------------------------------------------------------------------------------
def test_only_admins_delete_and_an_admin_delete_removes_the_manifest(stack: Stack) -> None:
    image = build_image(stack.workdir / "doomed", "v1", [12 * 1024], seed="doomed")
    assert stack.skopeo.push(image, "team/doomed", "ci") == image.manifest_digest
    paths = [
        "team/doomed/manifests/v1",
        f"team/doomed/manifests/{image.manifest_digest}",
        f"team/doomed/blobs/{image.layer_digests[0]}",
    ]
    upload = stack.request("ci", "POST", "team/doomed/blobs/uploads/")
    assert upload.status == 202
    location = header_lines(upload.head, "Location")[0].split("/v2/", 1)[1]
    for user in ("ci", "viewer", "alice"):
        for path in [*paths, location]:
            stack.request(user, "DELETE", path).assert_denied("deletes are for admins")
    stack.request(
        "teamops", "DELETE", f"secret/app/manifests/{stack.secret_app.manifest_digest}"
    ).assert_denied("no delete access to repository secret/app")
    assert stack.request("viewer", "GET", "team/doomed/manifests/v1", *OCI_ACCEPT).status == 200
    deleted = stack.request("teamops", "DELETE", f"team/doomed/manifests/{image.manifest_digest}")
    assert deleted.status == 202, deleted.head
    assert stack.request("viewer", "GET", "team/doomed/manifests/v1", *OCI_ACCEPT).status == 404
    assert (
        stack.request(
            "ops", "GET", f"secret/app/manifests/{stack.secret_app.manifest_digest}", *OCI_ACCEPT
        ).status
        == 200
    )


# -- the garbage collection window, through the front ----------------------------------------
def test_push_during_the_read_only_window_fails_fast_with_a_clear_error_and_pulls_work(
    stack: Stack,
) -> None:
    sim = stack.sim
    environment = sim.services["registry"].environment
    image = build_image(stack.workdir / "window", "v1", [16 * 1024], seed="window")

    def restart_registry() -> None:
        sim.stop_service("registry")
        sim.start_service("registry")
        sim.wait_registry()

    # What registry-gc.sh's compose override sets.
    environment["REGISTRY_STORAGE_MAINTENANCE_READONLY"] = '{"enabled": true}'
    try:
        restart_registry()
        started = time.monotonic()
        push = stack.skopeo.copy("ci", image.reference, stack.docker_ref("team/window"))
        assert push.returncode != 0
        assert time.monotonic() - started < 30
        assert "the registry is read-only for maintenance" in push.stderr.decode(), push.stderr
        upload = stack.request("ci", "POST", "team/window/blobs/uploads/")
        assert upload.status == 405
        assert header_lines(upload.head, "Content-Type") == ["Content-Type: application/json"]
        assert json.loads(upload.body)["errors"][0]["code"] == "UNSUPPORTED"
        pulled = stack.skopeo.copy(
            "viewer", stack.docker_ref("team/app"), f"oci:{stack.workdir / 'window-pull'}:v1"
        )
        assert pulled.returncode == 0, pulled.stderr.decode()
        # Unauthenticated writes still get 401, never the read-only answer.
        assert stack.request(None, "POST", "team/window/blobs/uploads/").status == 401
    finally:
        del environment["REGISTRY_STORAGE_MAINTENANCE_READONLY"]
        restart_registry()
    assert stack.skopeo.push(image, "team/window", "ci") == image.manifest_digest
