"""Pure functions that render the files and commands that land on the hosts.

Templates live in `files/`; `{{name}}` marks a value. Rendering fails loudly on a missing or an
unused value, so a template and its caller cannot drift apart. Nothing here reads a clock or a
random source: the same inputs give the same bytes, so an unchanged stack re-runs no command.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.access import Account, access_maps
from components.versions import NGINX_WORKER_GID

FILES_DIR = Path(__file__).resolve().parent.parent / "files"
SCRIPTS_DIR = FILES_DIR / "scripts"

# Where things live on the registry host.
CONFIG_DIR = "/etc/registry"
DATA_MOUNT = "/srv/registry"
DATA_DIR = f"{DATA_MOUNT}/data"
UNIT_PATH = "/etc/systemd/system/registry.service"
COMPOSE_PATH = f"{CONFIG_DIR}/compose.yaml"
GC_SCRIPT_PATH = f"{CONFIG_DIR}/registry-gc.sh"
GC_SERVICE_PATH = "/etc/systemd/system/registry-gc.service"
GC_TIMER_PATH = "/etc/systemd/system/registry-gc.timer"
# Where the client hosts keep what the trust and proof scripts read.
CLIENT_DIR = "/etc/private-registry"
CLIENT_CA_PATH = f"{CLIENT_DIR}/ca.crt"
CLIENT_PASSWORD_PATH = f"{CLIENT_DIR}/login-password"

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render_template(name: str, **values: object) -> str:
    """Fill `{{key}}` placeholders of `files/<name>`; every placeholder and value must match."""
    text = (FILES_DIR / name).read_text()
    wanted = set(_PLACEHOLDER.findall(text))
    given = set(values)
    if wanted != given:
        raise ValueError(f"template {name}: missing values {sorted(wanted - given)}, "
                         f"unused values {sorted(given - wanted)}")
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), text)


def script(name: str) -> str:
    """The text of a host script from `files/scripts/`."""
    return (SCRIPTS_DIR / name).read_text()


def sha256_hex(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class HostFile:
    """A file placed on a host: where, with which owner and mode, and whether it is secret."""

    path: str
    mode: int
    uid: int = 0
    gid: int = 0
    secret: bool = False

    @property
    def slug(self) -> str:
        """A resource-name-safe form of the path."""
        return re.sub(r"[^a-z0-9]+", "-", self.path.lower()).strip("-")


def place_file_command(host_file: HostFile) -> str:
    """A shell command that writes stdin to the file atomically with its owner and mode.

    A missing directory is created 0755; an existing one keeps its mode (e.g. /root/.ssh).
    The content arrives on stdin (never on the command line); it is written to a private
    temporary file in the same directory, then renamed over the target, so a reader such as
    nginx sees either the old or the new file, never a partial one.
    """
    path = shlex.quote(host_file.path)
    directory = shlex.quote(str(Path(host_file.path).parent))
    temporary = shlex.quote(f"{Path(host_file.path).parent}/.{Path(host_file.path).name}.XXXXXX")
    return "\n".join([
        "set -eu",
        f"[ -d {directory} ] || install -d -m 0755 {directory}",
        "umask 077",
        f'tmp="$(mktemp {temporary})"',
        "trap 'rm -f \"$tmp\"' EXIT",
        'cat >"$tmp"',
        f'chown {host_file.uid}:{host_file.gid} "$tmp"',
        f'chmod {host_file.mode:04o} "$tmp"',
        f'mv -f "$tmp" {path}',
        "trap - EXIT",
    ])


def script_command(*args: str) -> str:
    """`bash -s -- ARGS`: run a script given on stdin with quoted arguments."""
    return " ".join(["bash", "-s", "--", *(shlex.quote(arg) for arg in args)])


def ssha_hash(password: str, salt: bytes) -> str:
    """nginx's salted SHA-1 htpasswd scheme: `{SSHA}` base64(SHA1(password + salt) + salt).

    The passwords are 40 random alphanumerics (about 238 bits), so no hash speed makes a
    brute-force search feasible; the salt defeats precomputed tables. A slow hash (bcrypt cost 10)
    would add nothing for such passwords and costs about 53 ms of nginx worker CPU per request.
    """
    if len(salt) < 8:
        raise ValueError("the salt must be at least 8 bytes")
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def htpasswd(entries: Iterable[tuple[str, str, bytes]]) -> str:
    """An htpasswd file from (user, password, salt) entries, one line per user, in order."""
    return "".join(f"{user}:{ssha_hash(password, salt)}\n" for user, password, salt in entries)


def nginx_conf(port: int, server_names: Sequence[str], accounts: Sequence[Account]) -> str:
    return render_template("nginx.conf", listen_port=port, server_names=" ".join(server_names),
                           access_maps=access_maps(tuple(accounts)))


def registry_config() -> str:
    return render_template("registry-config.yml")


def registry_env(http_secret: str) -> str:
    return render_template("registry.env", http_secret=http_secret)


def compose_file(registry_image: str, nginx_image: str, port: int,
                 registry_config_sha256: str) -> str:
    return render_template("compose.yaml", registry_image=registry_image, nginx_image=nginx_image,
                           port=port, data_dir=DATA_DIR,
                           registry_config_sha256=registry_config_sha256)


def systemd_unit() -> str:
    return render_template("registry.service", data_mount=DATA_MOUNT)


def gc_script(delete_untagged: bool) -> str:
    return render_template("registry-gc.sh", compose_file=shlex.quote(COMPOSE_PATH),
                           data_dir=shlex.quote(DATA_DIR), data_mount=shlex.quote(DATA_MOUNT),
                           gc_flags="--delete-untagged" if delete_untagged else "")


def gc_service() -> str:
    return render_template("registry-gc.service", data_mount=DATA_MOUNT, gc_script=GC_SCRIPT_PATH)


def gc_timer(schedule: str) -> str:
    return render_template("registry-gc.timer", schedule=schedule)


def login_command(stack_output_passwords: str, user: str, address: str) -> str:
    """A `docker login` that reads the password from the stack output, never from argv."""
    return (f"pulumi stack output {stack_output_passwords} --show-secrets --json"
            f" | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"{user}\"])'"
            f" | docker login {address} --username {user} --password-stdin")


def trust_steps(name: str, port: int, public_ip: str, hosts_entry_needed: bool) -> str:
    """Shell steps that make another machine trust the registry (Linux; Docker, podman, curl)."""
    steps = [
        "pulumi stack output caCertificatePem > private-registry-ca.crt",
        f"sudo install -D -m 0644 private-registry-ca.crt /etc/docker/certs.d/{name}:{port}/ca.crt",
        f"sudo install -D -m 0644 private-registry-ca.crt "
        f"/etc/containers/certs.d/{name}:{port}/ca.crt",
        f"sudo install -D -m 0644 private-registry-ca.crt "
        f"/usr/local/share/ca-certificates/private-registry-{name}.crt",
        "sudo update-ca-certificates",
    ]
    if hosts_entry_needed:
        steps.append(f"echo '{public_ip} {name}' | sudo tee -a /etc/hosts")
    return "\n".join(steps)


# Every file the registry host gets, by role. Containers see these directories, not single
# files, through bind mounts, so an atomically renamed file is visible without a restart.
REGISTRY_HOST_FILES = {
    "compose": HostFile(COMPOSE_PATH, 0o644),
    "registry_config": HostFile(f"{CONFIG_DIR}/distribution/config.yml", 0o644),
    "registry_env": HostFile(f"{CONFIG_DIR}/registry.env", 0o600, secret=True),
    "nginx_conf": HostFile(f"{CONFIG_DIR}/nginx/nginx.conf", 0o644),
    # Read per request by nginx's worker (the image's `nginx` group), so 0640 root:nginx.
    "htpasswd": HostFile(f"{CONFIG_DIR}/auth/htpasswd", 0o640, gid=NGINX_WORKER_GID, secret=True),
    "server_cert": HostFile(f"{CONFIG_DIR}/tls/server.crt", 0o644),
    # Read by nginx's master process (root) only.
    "server_key": HostFile(f"{CONFIG_DIR}/tls/server.key", 0o600, secret=True),
    "ca_cert": HostFile(f"{CONFIG_DIR}/tls/ca.crt", 0o644),
    "systemd_unit": HostFile(UNIT_PATH, 0o644),
    "gc_script": HostFile(GC_SCRIPT_PATH, 0o755),
    "gc_service": HostFile(GC_SERVICE_PATH, 0o644),
    "gc_timer": HostFile(GC_TIMER_PATH, 0o644),
}
EXTRA_SSH_KEYS_FILE = HostFile("/root/.ssh/authorized_keys2", 0o600)
CLIENT_HOST_FILES = {
    "ca_cert": HostFile(CLIENT_CA_PATH, 0o644),
    "login_password": HostFile(CLIENT_PASSWORD_PATH, 0o600, secret=True),
}
