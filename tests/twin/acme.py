"""Let's Encrypt's stand-in in the twin: Debian's `pebble` (the ACME CA) and
`pebble-challtestsrv` (the Internet's DNS: it answers the names it is told, nothing else) on the
public network: pebble at the deployer's gateway address beside the Docker Hub stand-in, the DNS
at an address of its own. Its API's TLS certificate comes from a twin CA, as the hub's does
(tests/twin/hub.py); pebble's own root, which signs what it issues, is fetched from its
management API."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tests.twin.droplets import PUBLIC_GATEWAY, Twin, run
from tests.twin.hub import _certificates

ACME_PORT = 14000
MANAGEMENT_PORT = 15000
# Port 53 (what a droplet's resolv.conf can name) on an address of its own on the public network:
# the gateway's port 53 is the Docker Hub stand-in's DNS (tests/twin/hub.py).
DNS_IP = "203.0.113.53"
DNS = f"{DNS_IP}:53"
DNS_MANAGEMENT = f"http://{PUBLIC_GATEWAY}:8055"
DIRECTORY = f"https://{PUBLIC_GATEWAY}:{ACME_PORT}/dir"


class Acme:
    def __init__(self, twin: Twin, directory: Path) -> None:
        self.twin = twin
        directory.mkdir()
        # api_ca: what the registry droplet trusts for the ACME API (Let's Encrypt's API has a
        # publicly trusted certificate); never given to a client.
        self.api_ca, certificate, key = _certificates(directory)
        config = directory / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"{PUBLIC_GATEWAY}:{ACME_PORT}",
                        "managementListenAddress": f"{PUBLIC_GATEWAY}:{MANAGEMENT_PORT}",
                        "certificate": str(certificate),
                        "privateKey": str(key),
                        # HTTP-01 is validated on port 80, as Let's Encrypt does.
                        "httpPort": 80,
                        "tlsPort": 5001,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        for tool in ("pebble", "pebble-challtestsrv"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is missing (tests/run installs it as root)")
        run(twin.deployer("ip", "address", "add", f"{DNS_IP}/32", "dev", "public"))
        twin.start_process(
            twin.deployer(
                "pebble-challtestsrv", "-dns01", DNS, "-defaultIPv4", "", "-defaultIPv6", "",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-management", DNS_MANAGEMENT.removeprefix("http://"),
            ),
            directory / "challtestsrv.log",
        )  # fmt: skip
        # No nonce rejections or sleeps, and no reused authorizations: every order validates.
        twin.start_process(
            twin.deployer(
                "env", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0",
                "pebble", "-config", str(config), "-dnsserver", DNS,
            ),
            directory / "pebble.log",
        )  # fmt: skip
        self.root = self._retry(
            lambda: self._curl(
                "--cacert", str(self.api_ca),
                f"https://{PUBLIC_GATEWAY}:{MANAGEMENT_PORT}/roots/0",
            )
        )  # fmt: skip

    @property
    def api_ca_pem(self) -> str:
        return self.api_ca.read_text()

    def add_a(self, name: str, address: str) -> None:
        """The DNS answers `name`'s A query with `address` from now on."""
        self._retry(
            lambda: self._curl(
                "-d", json.dumps({"host": name, "addresses": [address]}),
                f"{DNS_MANAGEMENT}/add-a",
            )
        )  # fmt: skip

    def _curl(self, *argv: str) -> str:
        return run(self.twin.deployer("curl", "-sSf", "--max-time", "5", *argv))

    @staticmethod
    def _retry(attempt: Callable[[], str]) -> str:
        """`attempt()` until it succeeds (the servers are starting), for up to 20 s."""
        deadline = time.monotonic() + 20
        while True:
            try:
                return attempt()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
