"""Who may do what: user roles and repository scopes, and the nginx maps that enforce them.

A user is written in the `users` config list as `NAME[:ROLE[:SCOPE,...]]` (Pulumi config has no
object type): `ci` (a push user, every repository), `viewer:pull`, `ci:push:team/*,base/**`,
`ops:admin`. Roles: `pull` reads, `push` also writes, `admin` also deletes and lists the
catalog. A scope is a repository pattern: `*` matches within one path component, a final `**`
matches one or more components below (`team/**`: `team/app`, `team/a/b`), `**` alone matches
every repository.

nginx enforces it with `map`s (hash or regex lookups, no subrequest): the raw request line says
what is asked ("read team/app"), the user's entries say what is granted. `access_maps` renders
them; `files/nginx.conf` turns a refusal into a registry-style 403 after authentication.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROLES = ("pull", "push", "admin")
DEFAULT_ROLE = "push"
# The actions each role is granted on the repositories in its scopes.
ROLE_ACTIONS = {"pull": ("read",), "push": ("read", "write"), "admin": ("read", "write", "delete")}
EVERY_REPOSITORY = "**"
# The repository the client hosts' proof pushes to (files/scripts/verify-registry.sh).
PROOF_REPOSITORY = "private-registry/proof"
# The metrics user: in the htpasswd file like every user, so nginx's metrics listener can check
# its password, but granted nothing on the registry API (not even /v2/: 403). Not a `users` name.
METRICS_USER = "metrics"

USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# A scope component: repository-name characters and `*`; or `**` as the last component.
_SCOPE_COMPONENT = re.compile(r"^[a-z0-9._*-]+$")

# The registry's own grammar for repository names (distribution/reference): lowercase
# components separated by `/`, each alphanumerics joined by `.`, `_`, `__` or dashes.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_REFERENCE = r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"  # a tag, or a digest (algorithm:hex)
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]+"
_UPLOAD_ID = r"[A-Za-z0-9=_.-]+"
_QUERY = r"(?:\?.*)?"
# A blob mount's digest as clients send it: `sha256:<hex>`, or `sha256%3A<hex>` from Go's
# url.Values (Docker, skopeo, crane). The registry decodes only the `%3A`, so the value nginx
# checks is the value the registry reads.
_MOUNT_DIGEST = (
    r"(?:sha256(?::|%3[Aa])[0-9a-f]{64}|sha384(?::|%3[Aa])[0-9a-f]{96}"
    r"|sha512(?::|%3[Aa])[0-9a-f]{128})"
)
# In a `from=` value `/` is literal (containerd, oras-go) or `%2F` (Go's url.Values); in the
# request path it is literal.
_SEPARATOR = r"(?:/|%2[Ff])"
_NAME_CHARS = r"[a-z0-9._-]"


class ScopeError(ValueError):
    """A malformed scope; the message says which one."""


@dataclass(frozen=True)
class Account:
    """A registry user: name, role and the repository patterns the role applies to."""

    name: str
    role: str = DEFAULT_ROLE
    scopes: tuple[str, ...] = (EVERY_REPOSITORY,)

    @property
    def unscoped(self) -> bool:
        return EVERY_REPOSITORY in self.scopes

    def may(self, action: str, repository: str) -> bool:
        """The same decision nginx makes (used for the proof user; nginx is the enforcer)."""
        return action in ROLE_ACTIONS[self.role] and any(
            re.fullmatch(scope_regex(scope), repository) for scope in self.scopes
        )

    def describe(self) -> dict[str, object]:
        """The stack output form: role and repositories."""
        return {"role": self.role, "repositories": list(self.scopes)}


def scope_regex(scope: str) -> str:
    """The regex matching the repository names a scope covers (a `/` may be written `%2F`)."""
    components = scope.split("/")
    if scope == "" or any(component == "" for component in components):
        raise ScopeError(f"empty path component in scope {scope!r}")
    parts = []
    for index, component in enumerate(components):
        if component == "**":
            if index != len(components) - 1:
                raise ScopeError(f"** is allowed only as the last component, in {scope!r}")
            parts.append(f"{_NAME_CHARS}+(?:{_SEPARATOR}{_NAME_CHARS}+)*")
        elif not _SCOPE_COMPONENT.fullmatch(component) or "**" in component:
            raise ScopeError(
                f"scope {scope!r} has characters other than lowercase letters, "
                "digits, '.', '_', '-' and '*'"
            )
        else:
            parts.append(
                "".join(f"{_NAME_CHARS}*" if char == "*" else re.escape(char) for char in component)
            )
    return _SEPARATOR.join(parts)


def parse_account(entry: str) -> Account:
    """`NAME[:ROLE[:SCOPE,...]]` -> Account; ValueError naming the bad part."""
    name, has_role, rest = entry.partition(":")
    if not USER_NAME.fullmatch(name):
        raise ValueError(f"bad user name {name!r} in {entry!r}")
    if name == METRICS_USER:
        raise ValueError(f"{METRICS_USER!r} is the metrics user's name (reserved), in {entry!r}")
    if not has_role:
        return Account(name)
    role, has_scopes, scopes_text = rest.partition(":")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} in {entry!r}")
    if not has_scopes:
        return Account(name, role)
    if not scopes_text:
        raise ValueError(f"empty scope list in {entry!r}")
    scopes = tuple(scopes_text.split(","))
    for scope in scopes:
        try:
            scope_regex(scope)
        except ScopeError as error:
            raise ValueError(f"{error} in {entry!r}") from None
    if len(set(scopes)) != len(scopes):
        raise ValueError(f"repeated scope in {entry!r}")
    return Account(name, role, scopes)


def _quoted(text: str) -> str:
    if '"' in text or "\\\\" in text:
        raise ValueError(f"cannot quote {text!r} for nginx")
    return f'"{text}"'


def _request_map() -> list[str]:
    """What a request asks for, from the raw request line, i.e. what the registry will route.

    Values: `base`, `catalog`, `<action> <repository>`, or `other` (an encoded, unnormalized or
    unknown path: denied). Every DELETE is a `delete`, even an upload's cancellation.
    """
    name = f"({_REPOSITORY})"
    rules = [
        (rf"^(?:GET|HEAD) /v2/{_QUERY}$", "base"),
        (rf"^(?:GET|HEAD) /v2/_catalog{_QUERY}$", "catalog"),
        (rf"^(?:GET|HEAD) /v2/{name}/tags/list{_QUERY}$", "read $1"),
        (rf"^(?:GET|HEAD) /v2/{name}/manifests/{_REFERENCE}{_QUERY}$", "read $1"),
        (rf"^(?:GET|HEAD) /v2/{name}/blobs/{_DIGEST}{_QUERY}$", "read $1"),
        (rf"^(?:GET|HEAD) /v2/{name}/referrers/{_DIGEST}{_QUERY}$", "read $1"),
        (rf"^PUT /v2/{name}/manifests/{_REFERENCE}{_QUERY}$", "write $1"),
        # Any query: the registry gets the one nginx rebuilds (`_upstream_request_maps`).
        (rf"^POST /v2/{name}/blobs/uploads/{_QUERY}$", "write $1"),
        (rf"^(?:GET|HEAD|PATCH|PUT) /v2/{name}/blobs/uploads/{_UPLOAD_ID}{_QUERY}$", "write $1"),
        (
            (
                rf"^DELETE /v2/{name}/(?:manifests/{_REFERENCE}|blobs/{_DIGEST}"
                rf"|blobs/uploads/{_UPLOAD_ID}){_QUERY}$"
            ),
            "delete $1",
        ),
    ]
    return [
        '    map "$request_method $request_uri" $registry_request {',
        '        default "other";',
        *(f"        {_quoted('~' + regex)} {_quoted(value)};" for regex, value in rules),
        "    }",
    ]


def _mount_maps() -> list[str]:
    """A blob mount's digest and source repository, each as the client wrote it when it is of the
    registry's grammar (`$arg_` is the first `mount=`/`from=`), else empty. A literal `/` in
    `from` (containerd, oras-go) and `%2F` (Go's url.Values) both name the same repository."""
    source = f"{_COMPONENT}(?:{_SEPARATOR}{_COMPONENT})*"
    return [
        "    map $arg_mount $registry_mount_digest {",
        '        default "";',
        f"        {_quoted(f'~^{_MOUNT_DIGEST}$')} $arg_mount;",
        "    }",
        "    map $arg_from $registry_mount_source {",
        '        default "";',
        f"        {_quoted(f'~^{source}$')} $arg_from;",
        "    }",
    ]


def _upstream_request_maps() -> list[str]:
    """What the registry gets of a request's URI and Content-Type.

    The URI is the raw one, except for a new upload: the registry reads `mount` and `from` with
    Go's FormValue, so nginx rebuilds that query from what it checked and a client's own
    (duplicate, encoded or unknown keys, `origin`) never reaches it. A mount goes through only
    with a digest and a source the user may pull; otherwise the registry starts a plain upload
    (202) and the client uploads the blob, as the distribution spec allows.
    """
    # A named capture keeps its value when the maps evaluated after the match run regexes of
    # their own (they would overwrite $1).
    manifest_put = rf"~^PUT /v2/{_REPOSITORY}/manifests/{_REFERENCE}{_QUERY}$"
    upload_start = rf"^POST (?<registry_upload_path>/v2/{_REPOSITORY}/blobs/uploads/){_QUERY}$"
    return [
        '    map "$registry_mount_granted $registry_mount_digest $registry_mount_source"'
        " $registry_mount_query {",
        '        default "";',
        '        "~^1 [^ ]+ [^ ]+$" "?mount=$registry_mount_digest&from=$registry_mount_source";',
        "    }",
        '    map "$request_method $request_uri" $registry_upstream_uri {',
        "        default $request_uri;",
        f"        {_quoted('~' + upload_start)} $registry_upload_path$registry_mount_query;",
        "    }",
        # Only a manifest's type is the registry's business; with no Content-Type Go's FormValue
        # never parses a body (form-encoded, multipart, any case or parameters) as a form.
        '    map "$request_method $request_uri" $registry_content_type {',
        '        default "";',
        f"        {_quoted(manifest_put)} $content_type;",
        "    }",
    ]


def _scopes_regex(account: Account) -> str:
    return "(?:" + "|".join(scope_regex(scope) for scope in account.scopes) + ")"


def _grant_map(accounts: tuple[Account, ...]) -> list[str]:
    lines = [
        '    map "$remote_user $registry_request" $registry_request_granted {',
        "        default 0;",
        '        "~^[^ ]+ base$" 1;',
        # An exact match wins over every regex: the metrics user may not even ping /v2/.
        f"        {_quoted(f'{METRICS_USER} base')} 0;",
    ]
    for account in accounts:
        actions = "|".join(ROLE_ACTIONS[account.role])
        grant = f"~^{account.name} (?:{actions}) {_scopes_regex(account)}$"
        lines.append(f"        {_quoted(grant)} 1;")
        if account.role == "admin" and account.unscoped:
            lines.append(f"        {_quoted(f'{account.name} catalog')} 1;")
    return [*lines, "    }"]


def _mount_grant_map(accounts: tuple[Account, ...]) -> list[str]:
    """1 when the user may pull the mount's source repository (so the mount may go through)."""
    lines = [
        '    map "$remote_user $registry_mount_source" $registry_mount_granted {',
        "        default 0;",
    ]
    for account in accounts:
        lines.append(f"        {_quoted(f'~^{account.name} {_scopes_regex(account)}$')} 1;")
    return [*lines, "    }"]


def access_maps(accounts: tuple[Account, ...]) -> str:
    """The nginx `map` blocks (http level) that decide `$registry_access_denied` per request."""
    comment = [
        "    # Authorization (generated from the `users` setting). $remote_user is taken from the",
        "    # Authorization header before auth_basic has checked it; that is safe because a",
        "    # refusal goes through a location where auth_basic runs first (bad credentials: 401).",
    ]
    return "\n".join(
        [
            *comment,
            *_request_map(),
            *_grant_map(accounts),
            *_mount_maps(),
            *_mount_grant_map(accounts),
            *_upstream_request_maps(),
        ]
    )
