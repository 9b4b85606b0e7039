"""Stack settings: every config key parsed and validated in one place, before any resource.

`Pulumi.yaml` declares each key with its type, default and description; the Pulumi CLI applies
the defaults and hands every value to the program as a string (arrays as JSON). `parse_settings`
turns those strings into a typed `Settings` or raises one `SettingsError` that lists every bad key
with its value and the accepted form. It is a pure function, tested without Pulumi.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components import access, versions
from components.access import Account
from components.manifest import REGISTRY_LAYOUT

PROJECT = "private-registry"

# Regions that accept new droplets, volumes and VPCs (nyc2, ams2 and sfo1 no longer do).
REGIONS = (
    "ams3",
    "atl1",
    "blr1",
    "fra1",
    "lon1",
    "nyc1",
    "nyc3",
    "sfo2",
    "sfo3",
    "sgp1",
    "syd1",
    "tor1",
)
# The registry's debug port lives inside the host; 22 is SSH; nginx's metrics listener and its
# load balancer listener (storage spaces) have their own ports.
RESERVED_PORTS = (
    22,
    REGISTRY_LAYOUT.debug_port,
    REGISTRY_LAYOUT.metrics_port,
    REGISTRY_LAYOUT.balancer_port,
)
MAX_CLIENTS = 10
MAX_REGISTRIES = 10
STORAGE_MODES = ("volume", "spaces")
# Storage `spaces`: the registry's blob descriptor cache, per node in memory or one shared Valkey.
SPACES_CACHES = ("memory", "valkey")
# The regions with Spaces (object storage) in DigitalOcean's Spaces availability list.
SPACES_REGIONS = ("ams3", "atl1", "blr1", "fra1", "nyc3", "sfo2", "sfo3", "sgp1", "syd1")
# Spaces bucket names: 3 to 63 lowercase letters, digits and dashes, a letter or digit at each
# end (S3's DNS-compatible naming, which Spaces follows); unique per Spaces region.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
MAX_VOLUME_GB = 16384  # DigitalOcean's block storage limit (16 TiB)
MIN_CERT_HOURS = 24
MAX_CERT_HOURS = 87600  # 10 years, the CA's own validity
KEY_ALGORITHMS = ("ECDSA", "RSA")
# DigitalOcean name limits. Volumes: "lowercase ... numbers, letters and "-", up to a limit of 64
# characters ... must begin with a letter" (digitalocean_volume reference, docs.digitalocean.com).
# Droplet names set the host name and follow host name rules: one DNS label, 63 characters.
MAX_VOLUME_NAME = 64
MAX_DROPLET_NAME = 63
MAX_BUCKET_NAME = 63
# Spaces bucket names are shared with every other DigitalOcean customer, so a derived name
# (`<prefix>-images-<hex>`) ends in random bytes (a RandomId the stack keeps).
BUCKET_SUFFIX_BYTES = 4

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# At least two labels, and the last one (the TLD) not all digits, so an IP address is refused.
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.(?=[a-z0-9-]*[a-z]){_LABEL}$")
_SIZE_SLUG = re.compile(r"^[a-z][a-z0-9_.]*(?:-[a-z0-9_.]+)+$")
_UBUNTU_IMAGE = re.compile(r"^ubuntu-\d{2}-(?:04|10)-x64$")
_IMAGE_REF = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_VOLUME_NAME = re.compile(rf"^[a-z][a-z0-9-]{{0,{MAX_VOLUME_NAME - 1}}}$")
VOLUME_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# An address DigitalOcean can mail an alert to: one @, a dotted domain, no spaces or quotes.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&*+/=?^_`{|}~-]+@"
    r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$"
)
MAX_ALERT_EMAILS = 10
_SSH_PUBLIC_KEY = re.compile(
    r"^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [^\n]*)?$"
)


class SettingsError(pulumi.RunError):
    """Bad stack config. A RunError, so Pulumi prints the message without a traceback."""


@dataclass(frozen=True)
class Settings:
    region: str
    registry_size: str
    client_size: str
    image: str
    registry_name: str
    port: int
    accounts: tuple[Account, ...]  # from the `users` key
    password_rotation: int
    client_count: int
    admin_cidrs: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    domain: str | None
    volume_size_gb: int
    retain_volume_on_destroy: bool
    registry_image: str
    nginx_image: str
    tls_key_algorithm: str
    cert_validity_hours: int
    cert_early_renewal_hours: int
    ssh_public_keys: tuple[str, ...]
    existing_volume: str | None
    name_prefix: str  # of every DigitalOcean name, from the stack name

    @property
    def volume_name(self) -> str:
        """The name of the data volume this stack creates (unless it adopts one)."""
        return f"{self.name_prefix}-data"

    def registry_droplet_names(self) -> list[str]:
        """One registry droplet keeps today's name; several are numbered from 0."""
        if self.registry_count == 1:
            return [f"{self.name_prefix}-registry"]
        return [f"{self.name_prefix}-registry-{index}" for index in range(self.registry_count)]

    def droplet_names(self) -> list[str]:
        return [
            *self.registry_droplet_names(),
            *(f"{self.name_prefix}-client-{index}" for index in range(self.client_count)),
        ]

    gc_schedule: str
    gc_delete_untagged: bool
    storage: str  # "volume" (one droplet, block storage) or "spaces" (object storage)
    registry_count: int
    spaces_region_setting: str | None  # None: the droplets' region
    spaces_bucket_setting: str | None  # None: derived from the stack name
    spaces_redirect: bool  # blob downloads redirected to presigned Spaces URLs
    spaces_cache: str  # "memory" (per node) or "valkey" (a shared Managed Valkey cluster)

    @property
    def spaces(self) -> bool:
        return self.storage == "spaces"

    @property
    def spaces_region(self) -> str:
        """The bucket's region: `spacesRegion`, or the droplets' own."""
        return self.spaces_region_setting or self.region

    @property
    def spaces_bucket_prefix(self) -> str:
        """The derived bucket name before its random suffix, when `spacesBucket` is empty."""
        return f"{self.name_prefix}-images"

    disk_alert_percent: int
    alert_emails: tuple[str, ...]
    public_tls: bool  # the registry listener serves a certificate from `acme_directory`
    acme_directory_setting: str

    @property
    def acme_directory(self) -> str | None:
        """The ACME CA's directory URL when publicTls is on, else None."""
        return self.acme_directory_setting if self.public_tls else None

    # The Docker Hub pull-through cache (off by default): its TLS port, how long it keeps what it
    # fetched, and the Docker Hub account it pulls as (None: anonymous; the token is the secret
    # key `dockerHubToken`, read by `docker_hub_token`, never held here).
    hub_cache: bool
    hub_cache_port: int
    hub_cache_ttl: str
    docker_hub_user: str | None

    @property
    def hub_cache_address(self) -> str:
        """`name:port` of the Docker Hub cache: a registry mirror's address."""
        return f"{self.client_name}:{self.hub_cache_port}"

    @property
    def users(self) -> tuple[str, ...]:
        """The user names, in config order."""
        return tuple(account.name for account in self.accounts)

    @property
    def proof_user(self) -> str:
        """The first user who may push the client hosts' proof (checked when there are
        clients)."""
        return next(
            (
                account.name
                for account in self.accounts
                if account.may("write", access.PROOF_REPOSITORY)
            ),
            self.accounts[0].name,
        )

    @property
    def dns_name(self) -> str | None:
        """The public name published in `domain`: the registry name's first label there."""
        if not self.domain:
            return None
        return f"{self.registry_name.split('.')[0]}.{self.domain}"

    @property
    def server_names(self) -> list[str]:
        """The names the server certificate holds and nginx answers to."""
        return [self.registry_name, *([self.dns_name] if self.dns_name else [])]

    @property
    def client_name(self) -> str:
        """The name clients use: the DNS record when a domain is set, else the hosts entry."""
        return self.dns_name or self.registry_name

    @property
    def address(self) -> str:
        """`name:port`, what `docker login` and image references use."""
        return f"{self.client_name}:{self.port}"


class _Invalid(ValueError):
    """One value failed; the message is the accepted form."""


def _int(raw: str, low: int, high: int, form: str) -> int:
    if not re.fullmatch(r"-?[0-9]+", raw.strip()):
        raise _Invalid(form)
    value = int(raw)
    if not low <= value <= high:
        raise _Invalid(form)
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered not in ("true", "false"):
        raise _Invalid("true or false")
    return lowered == "true"


def _string_list(raw: str, form: str) -> list[str]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise _Invalid(f"a list: {form}") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Invalid(f"a list of strings: {form}")
    return value


def _region(raw: str) -> str:
    if raw not in REGIONS:
        raise _Invalid("a DigitalOcean region slug, one of " + ", ".join(REGIONS))
    return raw


def _size(raw: str) -> str:
    if not _SIZE_SLUG.fullmatch(raw):
        raise _Invalid("a DigitalOcean droplet size slug such as s-1vcpu-2gb or s-2vcpu-4gb")
    return raw


def _image(raw: str) -> str:
    if not _UBUNTU_IMAGE.fullmatch(raw):
        raise _Invalid(
            "an Ubuntu image slug such as ubuntu-24-04-x64 (the host scripts use Ubuntu's archive)"
        )
    return raw


def _registry_name(raw: str) -> str:
    if not _DNS_NAME.fullmatch(raw):
        raise _Invalid("a lowercase DNS name with at least one dot, such as registry.internal")
    return raw


def _port(raw: str) -> int:
    form = (
        "an integer from 1 to 65535 other than "
        + ", ".join(str(p) for p in RESERVED_PORTS)
        + " (e.g. 5043 or 443)"
    )
    port = _int(raw, 1, 65535, form)
    if port in RESERVED_PORTS:
        raise _Invalid(form)
    return port


USERS_FORM = (
    "a non-empty list of distinct users, each NAME, NAME:ROLE or NAME:ROLE:SCOPE,SCOPE...; "
    'NAME: lowercase letters, digits, "_" or "-", starting with a letter, at most 32 characters; '
    "ROLE: pull, push (the default) or admin; SCOPE: a repository pattern, * within one path "
    "component, ** as the last component for everything below (default **: every repository); "
    'e.g. ["ci:push:team/*", "viewer:pull", "ops:admin"]'
)


def _accounts(raw: str) -> tuple[Account, ...]:
    entries = _string_list(raw, USERS_FORM)
    if not entries:
        raise _Invalid(USERS_FORM)
    accounts = []
    for entry in entries:
        try:
            accounts.append(access.parse_account(entry))
        except ValueError as error:
            raise _Invalid(f"{USERS_FORM} ({error})") from None
    names = [account.name for account in accounts]
    if len(set(names)) != len(names):
        raise _Invalid(f"{USERS_FORM} (a user is listed twice)")
    return tuple(accounts)


def _cidrs(raw: str, allow_empty: bool) -> tuple[str, ...]:
    form = 'a list of CIDR blocks such as ["203.0.113.7/32", "2001:db8::/48"]' + (
        "" if allow_empty else ", at least one"
    )
    cidrs = _string_list(raw, form)
    if not cidrs and not allow_empty:
        raise _Invalid(form)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            raise _Invalid(form) from None
        if "/" not in cidr:
            raise _Invalid(form)
    return tuple(cidrs)


def _domain(raw: str) -> str | None:
    if raw == "":
        return None
    if not _DNS_NAME.fullmatch(raw):
        raise _Invalid("empty, or a domain managed in DigitalOcean DNS such as example.com")
    return raw


def _container_image(default: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw == "":
            return default
        if not _IMAGE_REF.fullmatch(raw) or (":" not in raw.rsplit("/", 1)[-1] and "@" not in raw):
            raise _Invalid(
                f"empty (the pinned {default}), or an image reference with an explicit "
                "tag or digest, such as " + default
            )
        return raw

    return parse


def _key_algorithm(raw: str) -> str:
    if raw not in KEY_ALGORITHMS:
        raise _Invalid("ECDSA (P-256) or RSA (3072 bits)")
    return raw


def _ssh_public_keys(raw: str) -> tuple[str, ...]:
    form = 'a list of OpenSSH public keys such as ["ssh-ed25519 AAAA... me@laptop"]'
    keys = _string_list(raw, form)
    for key in keys:
        if not _SSH_PUBLIC_KEY.fullmatch(key.strip()):
            raise _Invalid(form)
    return tuple(key.strip() for key in keys)


def _existing_volume(raw: str) -> str | None:
    if raw == "":
        return None
    if not (_VOLUME_NAME.fullmatch(raw) or VOLUME_ID.fullmatch(raw)):
        raise _Invalid(
            "empty (the stack creates its volume), or the name or id of a DigitalOcean "
            "volume in the stack's region, such as registry-dev-data or "
            "506f78a4-e098-11e5-ad9f-000f53306ae1"
        )
    return raw


def name_prefix(stack: str) -> str:
    """`registry-<stack>`: DigitalOcean names take lowercase letters, digits and dashes."""
    return "registry-" + re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")


def _derived_name_problems(settings: Settings, stack: str) -> list[str]:
    """The longest name made from the stack name that DigitalOcean would refuse, if any."""
    names = [(name, "droplet", MAX_DROPLET_NAME) for name in settings.droplet_names()]
    if settings.spaces and settings.spaces_bucket_setting is None:
        suffix = "0" * (2 * BUCKET_SUFFIX_BYTES)
        names.append((f"{settings.spaces_bucket_prefix}-{suffix}", "bucket", MAX_BUCKET_NAME))
    if not settings.spaces and settings.existing_volume is None:
        names.append((settings.volume_name, "volume", MAX_VOLUME_NAME))
    excess, name, kind, limit = max(
        (len(name) - limit, name, kind, limit) for name, kind, limit in names
    )
    if excess <= 0:
        return []
    return [
        f"  `pulumi stack` name {stack!r} makes the {kind} name {name!r} ({len(name)} "
        f"characters; DigitalOcean allows {limit}): expected a stack name of at most "
        f"{len(stack) - excess} characters (`pulumi stack init <shorter name>`)"
    ]


_GC_SHORTHANDS = (
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "quarterly",
    "semiannually",
    "yearly",
    "annually",
)
# A systemd calendar expression such as "Sun *-*-* 03:00:00" or "Mon..Fri 02:30".
_CALENDAR = re.compile(
    r"^(?:[A-Z][a-z]{2}(?:(?:\.\.|,)[A-Z][a-z]{2})* )?"
    r"(?:[0-9*][0-9*,./~-]*-[0-9*][0-9*,./~-]*-[0-9*][0-9*,./~-]* )?"
    r"[0-9*][0-9*,./]*:[0-9*][0-9*,./]*(?::[0-9*][0-9*,./]*)?$"
)


def _gc_schedule(raw: str) -> str:
    if raw in _GC_SHORTHANDS or _CALENDAR.fullmatch(raw):
        return raw
    raise _Invalid(
        "a systemd OnCalendar schedule: "
        + ", ".join(_GC_SHORTHANDS)
        + ', or [WEEKDAY] [YEAR-MONTH-DAY] HH:MM[:SS] such as "Sun *-*-* 03:00"'
    )


def _storage(raw: str) -> str:
    if raw not in STORAGE_MODES:
        raise _Invalid(
            "volume (one droplet, images on a block storage volume) or spaces (images in a "
            "Spaces bucket, registryCount droplets behind a load balancer)"
        )
    return raw


def _spaces_region(raw: str) -> str | None:
    if raw == "":
        return None
    if raw not in SPACES_REGIONS:
        raise _Invalid(
            "empty (the droplets' region), or a region with Spaces: " + ", ".join(SPACES_REGIONS)
        )
    return raw


def _spaces_bucket(raw: str) -> str | None:
    if raw == "":
        return None
    if not _BUCKET_NAME.fullmatch(raw):
        raise _Invalid(
            "empty (registry-<stack>-images-<random hex>), or a bucket name of 3 to 63 lowercase "
            "letters, "
            'digits and "-", starting and ending with a letter or digit, such as acme-registry'
        )
    return raw


def _spaces_cache(raw: str) -> str:
    if raw not in SPACES_CACHES:
        raise _Invalid(
            "memory (each node caches in memory) or valkey (one DigitalOcean Managed Valkey "
            "cluster shared by every node; storage spaces only)"
        )
    return raw


def _storage_problems(values: Mapping[str, Any], raw_config: Mapping[str, str | None]) -> list[str]:
    """Combinations of keys that cannot work together (each key is valid on its own)."""
    problems = []
    if values["storage"] == "volume" and values["registry_count"] > 1:
        problems.append(
            _problem(
                "registryCount",
                raw_config.get("registryCount"),
                "1 with storage volume (a volume attaches to one droplet): set storage to "
                "spaces for more registry droplets",
            )
        )
    if values["storage"] == "spaces" and values["existing_volume"] is not None:
        problems.append(
            _problem(
                "existingVolume",
                raw_config.get("existingVolume"),
                "empty with storage spaces (images live in the bucket, not on a volume)",
            )
        )
    if values["storage"] == "volume" and values["spaces_cache"] != "memory":
        problems.append(
            _problem(
                "spacesCache",
                raw_config.get("spacesCache"),
                "memory with storage volume (one node has nothing to share a cache with): set "
                "storage to spaces for a shared valkey cache",
            )
        )
    if (
        values["storage"] == "spaces"
        and values["spaces_region_setting"] is None
        and values["region"] not in SPACES_REGIONS
    ):
        problems.append(
            _problem(
                "spacesRegion",
                raw_config.get("spacesRegion"),
                f"a region with Spaces ({', '.join(SPACES_REGIONS)}): region "
                f"{values['region']} has none",
            )
        )
    return problems


# A Go duration distribution's `proxy.ttl` reads (e.g. 168h, 72h30m, 45m): whole hours, minutes
# and seconds, from a minute to a year (0, "never expire", would let the cache fill the volume).
_DURATION = re.compile(r"^(?:(?P<h>[0-9]{1,4})h)?(?:(?P<m>[0-9]{1,4})m)?(?:(?P<s>[0-9]{1,5})s)?$")
MIN_HUB_CACHE_TTL_SECONDS = 60
MAX_HUB_CACHE_TTL_SECONDS = 8760 * 3600
HUB_CACHE_TTL_FORM = (
    "a duration from 1m to 8760h in hours, minutes and seconds, such as 168h (a week, "
    "distribution's default), 72h or 30m"
)


def _hub_cache_ttl(raw: str) -> str:
    match = _DURATION.fullmatch(raw.strip())
    if raw.strip() == "" or match is None:
        raise _Invalid(HUB_CACHE_TTL_FORM)
    seconds = sum(
        int(match[unit] or 0) * factor for unit, factor in (("h", 3600), ("m", 60), ("s", 1))
    )
    if not MIN_HUB_CACHE_TTL_SECONDS <= seconds <= MAX_HUB_CACHE_TTL_SECONDS:
        raise _Invalid(HUB_CACHE_TTL_FORM)
    return raw.strip()


# Docker IDs: 4 to 30 lowercase letters and digits (Docker Hub's sign-up rule).
_DOCKER_ID = re.compile(r"^[a-z0-9]{4,30}$")
# Docker Hub personal access tokens (`dckr_pat_...`) and passwords: one line, no spaces.
_DOCKER_HUB_TOKEN = re.compile(r"^[\x21-\x7e]{8,512}$")


def _docker_hub_user(raw: str) -> str | None:
    if raw == "":
        return None
    if not _DOCKER_ID.fullmatch(raw):
        raise _Invalid(
            "empty (the cache pulls anonymously), or a Docker ID: 4 to 30 lowercase letters "
            "and digits"
        )
    return raw


def _hub_cache_problems(
    values: Mapping[str, Any], raw_config: Mapping[str, str | None], plain_secrets: Collection[str]
) -> list[str]:
    """The cache's port against the others, its storage, and its credentials (the token's value
    is never shown)."""
    problems = []
    token = raw_config.get("dockerHubToken") or ""
    if token and "dockerHubToken" in plain_secrets:
        problems.append(
            _secret_problem(
                "dockerHubToken",
                "an encrypted value: `pulumi config set --secret dockerHubToken <token>` (it "
                "was stored in plain text in the stack file: remove it there and rotate it)",
            )
        )
    if token and not _DOCKER_HUB_TOKEN.fullmatch(token):
        problems.append(
            _secret_problem(
                "dockerHubToken",
                "a Docker Hub access token (dckr_pat_...): 8 to 512 printable characters, no "
                "spaces (`pulumi config set --secret dockerHubToken`)",
            )
        )
    if bool(token) != (values["docker_hub_user"] is not None):
        problems.append(
            _secret_problem(
                "dockerHubToken",
                "set together with dockerHubUser, or both empty (the cache pulls anonymously)",
            )
        )
    if not values["hub_cache"]:
        return problems
    if values["hub_cache_port"] == values["port"]:
        problems.append(
            _problem(
                "hubCachePort",
                raw_config.get("hubCachePort"),
                f"a port other than port ({values['port']}): the cache serves at the root path "
                "of its own port, as a Docker registry mirror must",
            )
        )
    if values["public_tls"] and values["hub_cache_port"] == 80:
        problems.append(
            _problem(
                "hubCachePort",
                raw_config.get("hubCachePort"),
                "a port other than 80 with publicTls (port 80 answers the ACME challenges)",
            )
        )
    if values["storage"] != "volume":
        problems.append(
            _problem(
                "hubCache",
                raw_config.get("hubCache"),
                "false with storage spaces (the Docker Hub cache runs on the data volume of "
                'storage volume only; see README "Docker Hub cache")',
            )
        )
    return problems


ALERT_EMAILS_FORM = (
    f"a list of at most {MAX_ALERT_EMAILS} distinct e-mail addresses such as "
    '["ops@example.com"] (empty: no alerts, only the uptime check)'
)


# An ACME directory: https, a host name or address, an optional port and path.
_ACME_DIRECTORY = re.compile(r"^https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/-]*)?$")
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


def _acme_directory(raw: str) -> str:
    if not _ACME_DIRECTORY.fullmatch(raw):
        raise _Invalid(
            f"an ACME directory URL starting with https://, such as {LETS_ENCRYPT_DIRECTORY} "
            "(Let's Encrypt's staging CA: https://acme-staging-v02.api.letsencrypt.org/directory)"
        )
    return raw


def _public_tls_problems(
    values: Mapping[str, Any], raw_config: Mapping[str, str | None]
) -> list[str]:
    """publicTls with keys it cannot work with (each key is valid on its own)."""
    if not values["public_tls"]:
        return []
    raw = raw_config.get("publicTls")
    problems = []
    if values["domain"] is None:
        problems.append(
            _problem(
                "publicTls",
                raw,
                "false, or true with domain set (the certificate is for the registry's name "
                "in that DigitalOcean DNS domain, which Let's Encrypt validates)",
            )
        )
    if values["storage"] == "spaces":
        problems.append(
            _problem(
                "publicTls",
                raw,
                "false with storage spaces (every node behind the load balancer would need the "
                "certificate; see README, Public TLS)",
            )
        )
    if values["port"] == 80:
        problems.append(
            _problem(
                "port",
                raw_config.get("port"),
                "a port other than 80 with publicTls (port 80 answers the ACME challenges)",
            )
        )
    return problems


def _alert_emails(raw: str) -> tuple[str, ...]:
    emails = _string_list(raw, ALERT_EMAILS_FORM)
    if len(emails) > MAX_ALERT_EMAILS or len(set(emails)) != len(emails):
        raise _Invalid(ALERT_EMAILS_FORM)
    for email in emails:
        if not _EMAIL.fullmatch(email):
            raise _Invalid(f"{ALERT_EMAILS_FORM} ({email!r} is not one)")
    return tuple(emails)


# key -> (field, parser). The order is the order of Pulumi.yaml and of error messages.
_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "region": ("region", _region),
    "registrySize": ("registry_size", _size),
    "clientSize": ("client_size", _size),
    "image": ("image", _image),
    "registryName": ("registry_name", _registry_name),
    "port": ("port", _port),
    "users": ("accounts", _accounts),
    "passwordRotation": (
        "password_rotation",
        lambda raw: _int(
            raw, 0, 1_000_000, "an integer from 0 to 1000000; raise it to rotate every password"
        ),
    ),
    "clientCount": (
        "client_count",
        lambda raw: _int(raw, 0, MAX_CLIENTS, f"an integer from 0 to {MAX_CLIENTS}"),
    ),
    "adminCidrs": ("admin_cidrs", lambda raw: _cidrs(raw, allow_empty=False)),
    "allowedCidrs": ("allowed_cidrs", lambda raw: _cidrs(raw, allow_empty=True)),
    "domain": ("domain", _domain),
    "volumeSizeGb": (
        "volume_size_gb",
        lambda raw: _int(
            raw, 1, MAX_VOLUME_GB, f"an integer number of GiB from 1 to {MAX_VOLUME_GB}"
        ),
    ),
    "retainVolumeOnDestroy": ("retain_volume_on_destroy", _bool),
    "registryImage": ("registry_image", _container_image(versions.REGISTRY_IMAGE)),
    "nginxImage": ("nginx_image", _container_image(versions.NGINX_IMAGE)),
    "tlsKeyAlgorithm": ("tls_key_algorithm", _key_algorithm),
    "certValidityHours": (
        "cert_validity_hours",
        lambda raw: _int(
            raw,
            MIN_CERT_HOURS,
            MAX_CERT_HOURS,
            f"an integer from {MIN_CERT_HOURS} to {MAX_CERT_HOURS}",
        ),
    ),
    "certEarlyRenewalHours": (
        "cert_early_renewal_hours",
        lambda raw: _int(
            raw,
            0,
            MAX_CERT_HOURS - 1,
            "an integer number of hours, 0 or more and less than certValidityHours",
        ),
    ),
    "sshPublicKeys": ("ssh_public_keys", _ssh_public_keys),
    "existingVolume": ("existing_volume", _existing_volume),
    "gcSchedule": ("gc_schedule", _gc_schedule),
    "gcDeleteUntagged": ("gc_delete_untagged", _bool),
    "storage": ("storage", _storage),
    "registryCount": (
        "registry_count",
        lambda raw: _int(raw, 1, MAX_REGISTRIES, f"an integer from 1 to {MAX_REGISTRIES}"),
    ),
    "spacesRegion": ("spaces_region_setting", _spaces_region),
    "spacesBucket": ("spaces_bucket_setting", _spaces_bucket),
    "spacesRedirect": ("spaces_redirect", _bool),
    "diskAlertPercent": (
        "disk_alert_percent",
        lambda raw: _int(raw, 50, 99, "an integer percentage from 50 to 99"),
    ),
    "alertEmails": ("alert_emails", _alert_emails),
    "spacesCache": ("spaces_cache", _spaces_cache),
    "publicTls": ("public_tls", _bool),
    "acmeDirectory": ("acme_directory_setting", _acme_directory),
    "hubCache": ("hub_cache", _bool),
    "hubCachePort": ("hub_cache_port", _port),
    "hubCacheTtl": ("hub_cache_ttl", _hub_cache_ttl),
    "dockerHubUser": ("docker_hub_user", _docker_hub_user),
}
# Secret keys: validated with the others, never kept in `Settings` nor shown in an error.
SECRET_KEYS = ("dockerHubToken",)

CONFIG_KEYS = (*_FIELDS, *SECRET_KEYS)


def _problem(key: str, raw: str | None, form: str) -> str:
    shown = "(not set)" if raw is None else repr(raw)
    return f"  {PROJECT}:{key} = {shown}: expected {form}"


def _secret_problem(key: str, form: str) -> str:
    return f"  {PROJECT}:{key} = [secret]: expected {form}"


def parse_settings(
    raw_config: Mapping[str, str | None], stack: str = "dev", plain_secrets: Collection[str] = ()
) -> Settings:
    """Validate the raw config strings (keys without the project prefix) into `Settings`, for
    the stack `stack` (DigitalOcean names are derived from it). `plain_secrets`: the secret keys
    set without `--secret`."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, (field, parse) in _FIELDS.items():
        raw = raw_config.get(key)
        if raw is None:
            problems.append(
                _problem(
                    key,
                    None,
                    "a value (Pulumi.yaml declares its default; use Pulumi CLI 3.120 or newer)",
                )
            )
            continue
        try:
            values[field] = parse(raw)
        except _Invalid as invalid:
            problems.append(_problem(key, raw, str(invalid)))
    if not problems and values["cert_early_renewal_hours"] >= values["cert_validity_hours"]:
        problems.append(
            _problem(
                "certEarlyRenewalHours",
                raw_config.get("certEarlyRenewalHours"),
                f"fewer hours than certValidityHours ({values['cert_validity_hours']})",
            )
        )
    if (
        not problems
        and values["client_count"] > 0
        and not any(account.may("write", access.PROOF_REPOSITORY) for account in values["accounts"])
    ):
        problems.append(
            _problem(
                "users",
                raw_config.get("users"),
                "a push or admin user whose scopes include "
                f"{access.PROOF_REPOSITORY} (the client hosts push their proof "
                "there), or clientCount 0",
            )
        )
    if not problems:
        problems += _storage_problems(values, raw_config)
    if not problems:
        problems += _public_tls_problems(values, raw_config)
        problems += _hub_cache_problems(values, raw_config, plain_secrets)
    settings = None if problems else Settings(**values, name_prefix=name_prefix(stack))
    if settings is not None:
        problems += _derived_name_problems(settings, stack)
    if problems or settings is None:
        raise SettingsError(
            "Invalid stack configuration:\n"
            + "\n".join(problems)
            + "\nFix with `pulumi config set <key> <value>` "
            "(lists: `pulumi config set --path '<key>[0]' <value>`)."
        )
    return settings


def load_settings() -> Settings:
    """Read this project's config through the Pulumi SDK and validate it (a secret key's raw
    value too, which is only checked, never kept)."""
    config = pulumi.Config(PROJECT)
    raw = {key: config.get(key) for key in _FIELDS}
    plain_secrets = []
    for key in SECRET_KEYS:
        raw[key] = pulumi.runtime.get_config(f"{PROJECT}:{key}")
        if raw[key] and not pulumi.runtime.is_config_secret(f"{PROJECT}:{key}"):
            plain_secrets.append(key)
    return parse_settings(raw, pulumi.get_stack(), plain_secrets)


def docker_hub_token() -> pulumi.Output[str] | None:
    """The Docker Hub token the cache pulls with (`dockerHubToken`, secret), or None."""
    token = pulumi.Config(PROJECT).get_secret("dockerHubToken")
    return None if token is None else token
