"""Text the stack outputs show a user: how to log in, how to make a machine trust the CA."""

from __future__ import annotations

import base64
import json


def login_command(stack_output_passwords: str, user: str, address: str) -> str:
    """A `docker login` that reads the password from the stack output, never from argv."""
    return (
        f"pulumi stack output {stack_output_passwords} --show-secrets --json"
        f" | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"{user}\"])'"
        f" | docker login {address} --username {user} --password-stdin"
    )


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


def docker_config_json(address: str, user: str, password: str) -> str:
    """A Docker `config.json` with one login: the `.dockerconfigjson` key of a Kubernetes
    `kubernetes.io/dockerconfigjson` secret, and what CI systems, skopeo and podman
    (`--authfile`) take. `auth` is base64 of `user:password`, as `docker login` writes it."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps(
        {"auths": {address: {"username": user, "password": password, "auth": auth}}},
        sort_keys=True,
    )


def containerd_hosts_toml(address: str) -> str:
    """containerd's registry host config (containerd docs/hosts.md, containerd 1.5 and newer)
    for `/etc/containerd/certs.d/<name:port>/hosts.toml`: pulls trust the CA beside it."""
    endpoint = f"https://{address}"
    return (
        f"# /etc/containerd/certs.d/{address}/hosts.toml (the CA: caCertificatePem, at ca)\n"
        f'server = "{endpoint}"\n'
        "\n"
        f'[host."{endpoint}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f'  ca = "/etc/containerd/certs.d/{address}/ca.crt"\n'
    )


# Where containerd (and so Kubernetes nodes) reads Docker Hub's host configuration, and the CA
# file beside it that trusts the cache (containerd docs/hosts.md: `config_path`, `ca`).
CONTAINERD_DOCKER_HUB_DIR = "/etc/containerd/certs.d/docker.io"


def docker_hub_hosts_toml(hub_cache_address: str, docker_hub_url: str) -> str:
    """`hosts.toml` for `CONTAINERD_DOCKER_HUB_DIR`: containerd pulls Docker Hub images through
    the cache first (pull and resolve only), and from Docker Hub (`docker_hub_url`) itself when
    the cache fails."""
    return "\n".join(
        [
            f"# {CONTAINERD_DOCKER_HUB_DIR}/hosts.toml (with the stack's CA as",
            f"# {CONTAINERD_DOCKER_HUB_DIR}/private-registry-ca.crt, and the cache's name",
            "# resolving on the node); containerd's CRI registry config_path must be",
            "# /etc/containerd/certs.d.",
            f'server = "{docker_hub_url}"',
            "",
            f'[host."https://{hub_cache_address}"]',
            '  capabilities = ["pull", "resolve"]',
            f'  ca = "{CONTAINERD_DOCKER_HUB_DIR}/private-registry-ca.crt"',
            "",
        ]
    )
