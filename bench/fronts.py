"""Fronts to compare: the program's own rendered files, and small visible edits of them.

A front is named by steps joined with `+`, applied in order to the files the program renders
(e.g. `program`, `tutorial`, `bcrypt10`, `program+body-buffer-1m`, `rsa+workers-1`). Every
step is a few text edits that fail loudly when the line they edit is not there, so a step
cannot silently stop applying when files/ change. The program's files stay the headline:
`program` is the identity.
"""

from __future__ import annotations

import datetime
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from components.access import Account, access_maps
from components.manifest import REGISTRY_LAYOUT
from tests.harness import ProgramRun


@dataclass(frozen=True)
class FrontFiles:
    """The files of the registry host that a front may change (as text)."""

    nginx_conf: str
    htpasswd: str
    registry_config: str
    server_cert: str
    server_key: str


@dataclass(frozen=True)
class Context:
    """What some steps need besides the files: the users' passwords and the stack's CA."""

    passwords: Mapping[str, str]
    ca_cert_pem: str
    ca_key_pem: str

    @classmethod
    def of(cls, run: ProgramRun) -> Context:
        signed = [
            r
            for r in run.resources.values()
            if r.type == "tls:index/locallySignedCert:LocallySignedCert"
        ]
        if len(signed) != 1:
            raise AssertionError(f"expected one locally signed certificate, found {len(signed)}")
        return cls(
            passwords=dict(run.outputs["passwords"]),
            ca_cert_pem=run.outputs["caCertificatePem"],
            ca_key_pem=signed[0].inputs["caPrivateKeyPem"],
        )


# -- text edits that fail loudly -------------------------------------------------------------
def _line_pattern(directive: str) -> re.Pattern[str]:
    return re.compile(
        rf"^(?P<indent>[ \t]*){re.escape(directive)}(?:[ \t][^\n]*)?;[ \t]*\n", re.MULTILINE
    )


def drop(text: str, directive: str) -> str:
    """Remove every `directive ...;` line (there must be at least one)."""
    new, count = _line_pattern(directive).subn("", text)
    if count == 0:
        raise AssertionError(f"no `{directive}` line to drop")
    return new


def set_value(text: str, directive: str, value: str) -> str:
    """Replace the value of the one `directive ...;` line."""
    pattern = _line_pattern(directive)
    matches = pattern.findall(text)
    if len(matches) != 1:
        raise AssertionError(f"expected one `{directive}` line, found {len(matches)}")
    return pattern.sub(lambda m: f"{m.group('indent')}{directive} {value};\n", text)


def add_after(text: str, anchor: str, line: str) -> str:
    """Insert `line;` (same indentation) after the one line starting with `anchor`."""
    pattern = re.compile(rf"^(?P<indent>[ \t]*){re.escape(anchor)}[^\n]*\n", re.MULTILINE)
    matches = list(pattern.finditer(text))
    if len(matches) != 1:
        raise AssertionError(f"expected one line starting with `{anchor}`, found {len(matches)}")
    match = matches[0]
    return text[: match.end()] + f"{match.group('indent')}{line};\n" + text[match.end() :]


def replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise AssertionError(f"expected `{old}` once, found it {text.count(old)} times")
    return text.replace(old, new)


# -- the registry's listener ----------------------------------------------------------------
# The program's registry listens on a Unix socket only nginx shares; for the direct baseline (and
# the `tcp-upstream` front) it listens on this TCP port, the one it had before the socket.
DIRECT_PORT = 5000
_SOCKET_LISTENER = f"  net: unix\n  addr: {REGISTRY_LAYOUT.registry_socket}\n"
_TCP_LISTENER = f"  addr: :{DIRECT_PORT}\n"


def with_tcp_listener(registry_config: str) -> str:
    """The registry config with its API on DIRECT_PORT instead of the socket (as it is)."""
    if _TCP_LISTENER in registry_config:
        return registry_config
    return replace_once(registry_config, _SOCKET_LISTENER, _TCP_LISTENER)


def _tcp_upstream(files: FrontFiles, context: Context) -> FrontFiles:
    """nginx reaches the registry's API over TCP on the compose network (by its service name),
    as the program did before the Unix socket."""
    return replace(
        files,
        registry_config=with_tcp_listener(files.registry_config),
        nginx_conf=replace_once(
            files.nginx_conf,
            f"server unix:{REGISTRY_LAYOUT.registry_socket};",
            f"server {REGISTRY_LAYOUT.registry_service}:{DIRECT_PORT};",
        ),
    )


# -- htpasswd and key material ---------------------------------------------------------------
def apr1_htpasswd(passwords: Mapping[str, str]) -> str:
    """`$apr1$` (Apache MD5, 1000 rounds) as `htpasswd -m` writes it; password on stdin."""
    lines = []
    for user, password in passwords.items():
        hashed = (
            subprocess.run(
                ["openssl", "passwd", "-apr1", "-stdin"],
                input=password.encode(),
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        lines.append(f"{user}:{hashed}\n")
    return "".join(lines)


def bcrypt_htpasswd(passwords: Mapping[str, str], cost: int) -> str:
    """`$2a$` bcrypt, as `RandomPassword.bcrypt_hash` (Go, cost 10) gives it."""
    return "".join(
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost, b'2a')).decode()}\n"
        for user, password in passwords.items()
    )


def rsa_server_identity(files: FrontFiles, context: Context) -> FrontFiles:
    """The same certificate (subject, SANs, usages) for a new RSA 3072 key, signed by the CA."""
    current = x509.load_pem_x509_certificate(files.server_cert.encode())
    ca_key = serialization.load_pem_private_key(context.ca_key_pem.encode(), password=None)
    ca_cert = x509.load_pem_x509_certificate(context.ca_cert_pem.encode())
    key = rsa.generate_private_key(65537, 3072)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return replace(
        files,
        server_cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
        server_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode(),
    )


# -- the steps -------------------------------------------------------------------------------
Step = Callable[[FrontFiles, Context], FrontFiles]


def _nginx(edit: Callable[[str], str]) -> Step:
    return lambda files, context: replace(files, nginx_conf=edit(files.nginx_conf))


def _nginx_settings(*settings: tuple[str, str], note: str = "") -> tuple[str, Step]:
    """A step that sets nginx directives to values, described by them."""

    def edit(text: str) -> str:
        for directive, value in settings:
            text = set_value(text, directive, value)
        return text

    return ", ".join(f"{directive} {value}" for directive, value in settings) + note, _nginx(edit)


def _registry(edit: Callable[[str], str]) -> Step:
    return lambda files, context: replace(files, registry_config=edit(files.registry_config))


def _tutorial(files: FrontFiles, context: Context) -> FrontFiles:
    conf = files.nginx_conf
    # The tutorial's proxy: HTTP/1.0 to the upstream, a new connection per request, the whole
    # request body spooled first, nginx's default (4k/8k) proxy buffers with buffering on.
    for directive in (
        "keepalive",
        "proxy_http_version",
        "proxy_set_header Connection",
        "proxy_request_buffering",
        "client_body_buffer_size",
        "proxy_buffering",
        "proxy_buffer_size",
        "proxy_buffers",
    ):
        conf = drop(conf, directive)
    return replace(files, nginx_conf=conf, htpasswd=apr1_htpasswd(context.passwords))


def _without_authorization(files: FrontFiles, context: Context) -> FrontFiles:
    """No authorization check: the maps stay but are never evaluated (nginx maps are lazy)."""
    check = (
        "            if ($registry_access_denied) {\n                return 418;\n            }\n"
    )
    return replace(files, nginx_conf=replace_once(files.nginx_conf, check, ""))


SCOPED_USER_PEERS = 20


def _scoped_user(files: FrontFiles, context: Context) -> FrontFiles:
    """The benchmark's user as a push user scoped to bench/*, listed after 20 other scoped
    users: its grant is the last regex nginx tries."""
    user = min(context.passwords)
    unscoped = access_maps(tuple(Account(name) for name in context.passwords))
    peers = tuple(
        Account(f"user{index:02d}", "push", (f"team{index:02d}/*", "shared/**"))
        for index in range(SCOPED_USER_PEERS)
    )
    scoped = access_maps((*peers, Account(user, "push", ("bench/*",))))
    return replace(files, nginx_conf=replace_once(files.nginx_conf, unscoped, scoped))


STEPS: dict[str, tuple[str, Step]] = {
    "program": ("the program's rendered files, unchanged", lambda files, context: files),
    "tutorial": (
        (
            "the original tutorial's proxying (request buffering on, HTTP/1.0 upstream "
            "without keepalive, default proxy buffers) and an $apr1$ htpasswd"
        ),
        _tutorial,
    ),
    "tcp-upstream": (
        (
            "the registry's API on TCP over the compose network instead of its Unix socket "
            "(the program before issue 12)"
        ),
        _tcp_upstream,
    ),
    "bcrypt10": (
        "htpasswd with bcrypt cost 10 ($2a$, RandomPassword.bcrypt_hash's default)",
        lambda files, context: replace(files, htpasswd=bcrypt_htpasswd(context.passwords, 10)),
    ),
    "apr1": (
        "htpasswd with $apr1$ (openssl passwd -apr1)",
        lambda files, context: replace(files, htpasswd=apr1_htpasswd(context.passwords)),
    ),
    "rsa": ("RSA 3072 server key instead of ECDSA P-256", rsa_server_identity),
    "no-authz": (
        ("no authorization check (roles and scopes not evaluated): the cost before access control"),
        _without_authorization,
    ),
    "scoped-user": (
        (
            f"the benchmark user pushes to bench/* only, after {SCOPED_USER_PEERS} "
            "other scoped users in the grant map"
        ),
        _scoped_user,
    ),
    "workers-1": _nginx_settings(("worker_processes", "1")),
    "no-reuseport": (
        "listen without reuseport",
        _nginx(lambda t: replace_once(t, " ssl reuseport;", " ssl;")),
    ),
    "body-buffer-16k": _nginx_settings(
        ("client_body_buffer_size", "16k"), note=" (nginx's default; the program sets 256k)"
    ),
    "body-buffer-64k": _nginx_settings(("client_body_buffer_size", "64k")),
    "body-buffer-1m": _nginx_settings(("client_body_buffer_size", "1m")),
    "proxy-buffer-16k": _nginx_settings(("proxy_buffer_size", "16k"), ("proxy_buffers", "8 16k")),
    "proxy-buffer-256k": _nginx_settings(
        ("proxy_buffer_size", "256k"), ("proxy_buffers", "8 256k")
    ),
    "proxy-buffer-1m": _nginx_settings(("proxy_buffer_size", "1m"), ("proxy_buffers", "8 1m")),
    "proxy-buffering-on": (
        "proxy_buffering on, in memory only (proxy_max_temp_file_size 0)",
        _nginx(
            lambda t: add_after(
                set_value(t, "proxy_buffering", "on"),
                "proxy_buffering",
                "proxy_max_temp_file_size 0",
            )
        ),
    ),
    "ssl-buffer-4k": (
        "ssl_buffer_size 4k (default 16k)",
        _nginx(lambda t: add_after(t, "ssl_session_tickets", "ssl_buffer_size 4k")),
    ),
    "ssl-buffer-64k": (
        "ssl_buffer_size 64k",
        _nginx(lambda t: add_after(t, "ssl_session_tickets", "ssl_buffer_size 64k")),
    ),
    "sendfile-off": (
        "sendfile off (nginx serves no files itself: expected no effect)",
        _nginx(lambda t: set_value(t, "sendfile", "off")),
    ),
    "nginx-log-off": ("nginx access_log off", _nginx(lambda t: set_value(t, "access_log", "off"))),
    "tls-session-off": (
        "ssl_session_cache off (every new connection a full handshake)",
        _nginx(lambda t: set_value(t, "ssl_session_cache", "off")),
    ),
    "upstream-keepalive-off": (
        "no upstream keepalive (a new registry connection per request)",
        _nginx(lambda t: drop(t, "keepalive")),
    ),
    "registry-accesslog-off": (
        "registry log.accesslog.disabled: true",
        _registry(lambda t: replace_once(t, "log:\n", "log:\n  accesslog:\n    disabled: true\n")),
    ),
    "registry-log-warn": (
        "registry log.level: warn (no per-request info lines)",
        _registry(lambda t: replace_once(t, "  level: info\n", "  level: warn\n")),
    ),
}


@dataclass(frozen=True)
class Front:
    name: str
    steps: tuple[str, ...]
    files: FrontFiles

    @property
    def description(self) -> str:
        return "; ".join(STEPS[step][0] for step in self.steps)


def build_front(name: str, base: FrontFiles, context: Context) -> Front:
    steps = tuple(name.split("+"))
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise SystemExit(
            f"--fronts: unknown step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}"
        )
    files = base
    for step in steps:
        files = STEPS[step][1](files, context)
    return Front(name=name, steps=steps, files=files)


def describe_steps() -> str:
    width = max(len(name) for name in STEPS)
    return "\n".join(
        f"  {name:<{width}}  {description}" for name, (description, _) in STEPS.items()
    )
