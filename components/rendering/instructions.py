"""Text the stack outputs show a user: how to log in, how to make a machine trust the CA."""

from __future__ import annotations


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
