"""Registry users: a generated password per user, the htpasswd file, and the registry's secret."""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random

from components.rendering import htpasswd

# 40 alphanumerics: about 238 bits, and safe in htpasswd, shell and URLs without quoting.
PASSWORD_LENGTH = 40
SALT_BYTES = 16


def _htpasswd_entry(user: str, password_and_salt: list[str]) -> tuple[str, str, bytes]:
    password, salt_base64 = password_and_salt
    return user, password, base64.b64decode(salt_base64)


@dataclass
class CredentialsArgs:
    users: Sequence[str]
    rotation: int  # raising it replaces every password (a keeper)
    metrics_user: str  # in the htpasswd file too, with its own password (`metrics_password`)


class Credentials(pulumi.ComponentResource):
    """One `random.RandomPassword` per user and the nginx htpasswd file built from them.

    Attributes: `passwords` (user -> secret Output), `metrics_password` (the metrics user's),
    `htpasswd` (secret Output, every user and the metrics user) and `http_secret` (secret Output,
    the registry's `http.secret`, stable across restarts).
    """

    passwords: dict[str, pulumi.Output[str]]
    metrics_password: pulumi.Output[str]
    htpasswd: pulumi.Output[str]
    http_secret: pulumi.Output[str]

    def __init__(
        self, name: str, args: CredentialsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("private-registry:index:Credentials", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        entries: list[pulumi.Output[tuple[str, str, bytes]]] = []
        self.passwords = {}
        for user in [*args.users, args.metrics_user]:
            keepers = {"user": user, "rotation": str(args.rotation)}
            password = random.RandomPassword(
                f"{name}-{user}-password",
                length=PASSWORD_LENGTH,
                special=False,
                min_lower=4,
                min_upper=4,
                min_numeric=4,
                keepers=keepers,
                opts=child,
            )
            # The htpasswd salt rotates with the password.
            salt = random.RandomBytes(
                f"{name}-{user}-salt", length=SALT_BYTES, keepers=keepers, opts=child
            )
            self.passwords[user] = password.result
            entries.append(
                pulumi.Output.all(password.result, salt.base64).apply(
                    functools.partial(_htpasswd_entry, user)
                )
            )

        self.metrics_password = self.passwords.pop(args.metrics_user)
        self.htpasswd = pulumi.Output.secret(
            pulumi.Output.all(*entries).apply(htpasswd.htpasswd_file)
        )
        self.http_secret = random.RandomPassword(
            f"{name}-registry-http-secret", length=48, special=False, opts=child
        ).result

        self.register_outputs({"users": list(args.users)})
