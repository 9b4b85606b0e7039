"""Network probes that run inside the client's network namespace, as a script:

    python probes.py ports HOST FIRST LAST            open TCP ports of HOST, one per line
    python probes.py hello HOST PORT SNI VERSION SUITE...
                                                      one raw ClientHello; prints the reply
    python probes.py ciphers HOST PORT SNI NAME...    TLS 1.2 handshakes, one per OpenSSL
                                                      cipher name; prints the accepted ones

`hello` writes the ClientHello by hand, so it can offer what this machine's OpenSSL no longer
can (SSLv3, RC4, 3DES, EXPORT suites): a refusal it reports is the server's. It prints
`server-hello VERSION SUITE` (both hex) or `alert DESCRIPTION` or `closed`.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import struct
import sys
import time

TIMEOUT = 3.0


# -- ports ----------------------------------------------------------------------------------
def open_ports(host: str, first: int, last: int, batch: int = 1024) -> list[int]:
    """Non-blocking connects, a batch at a time; a port is open when its connect completes."""
    found = []
    for start in range(first, last + 1, batch):
        pending: dict[int, tuple[socket.socket, int]] = {}
        poller = select.poll()
        for port in range(start, min(start + batch, last + 1)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            status = sock.connect_ex((host, port))
            if status != errno.EINPROGRESS:  # connected at once, or refused or unreachable
                if status == 0:
                    found.append(port)
                sock.close()
                continue
            pending[sock.fileno()] = (sock, port)
            poller.register(sock, select.POLLOUT | select.POLLERR | select.POLLHUP)
        deadline = time.monotonic() + TIMEOUT
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                sock, port = pending.pop(fd)
                poller.unregister(fd)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    found.append(port)
                sock.close()
        for sock, _ in pending.values():  # no answer within the timeout: filtered, not open
            sock.close()
    return sorted(found)


# -- raw ClientHello ------------------------------------------------------------------------
def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(server_name: str, version: int, suites: list[int]) -> bytes:
    """A TLS record holding a ClientHello for `version` (0x0300 SSLv3 ... 0x0303 TLS 1.2)
    offering `suites`, with SNI, the usual curves and signature algorithms."""
    name = server_name.encode()
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    groups = [0x001D, 0x0017, 0x0018]  # x25519, P-256, P-384
    signatures = [0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501, 0x0201, 0x0203]
    extensions = b"".join(
        [
            _extension(0x0000, sni),
            _extension(
                0x000A,
                struct.pack("!H", 2 * len(groups)) + b"".join(struct.pack("!H", g) for g in groups),
            ),
            _extension(0x000B, b"\x01\x00"),  # EC point formats: uncompressed
            _extension(
                0x000D,
                struct.pack("!H", 2 * len(signatures))
                + b"".join(struct.pack("!H", s) for s in signatures),
            ),
            _extension(0xFF01, b"\x00"),  # secure renegotiation, initial handshake
        ]
    )
    body = (
        struct.pack("!H", version)
        + os.urandom(32)
        + b"\x00"
        + struct.pack("!H", 2 * len(suites))
        + b"".join(struct.pack("!H", s) for s in suites)
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def hello(host: str, port: int, server_name: str, version: int, suites: list[int]) -> str:
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(client_hello(server_name, version, suites))
        try:
            header = _read_exactly(sock, 5)
        except (ConnectionResetError, TimeoutError):
            return "closed"
        if len(header) < 5:
            return "closed"
        content_type, _, length = struct.unpack("!BHH", header)
        record = _read_exactly(sock, length)
    if content_type == 0x15 and len(record) >= 2:
        return f"alert {record[1]}"
    if content_type == 0x16 and record[:1] == b"\x02":
        server_version = struct.unpack("!H", record[4:6])[0]
        session_id_length = record[38]
        suite = struct.unpack("!H", record[39 + session_id_length : 41 + session_id_length])[0]
        return f"server-hello {server_version:04x} {suite:04x}"
    return f"unexpected {content_type:02x} {record[:8].hex()}"


# -- OpenSSL handshakes ---------------------------------------------------------------------
def accepted_ciphers(host: str, port: int, server_name: str, names: list[str]) -> list[str]:
    """The TLS 1.2 cipher names a full handshake succeeds with, offering one at a time."""
    accepted = []
    for name in names:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        # SECLEVEL=0: this client offers anything OpenSSL still has; refusals are the server's.
        context.set_ciphers(f"{name}:@SECLEVEL=0")
        try:
            with (
                socket.create_connection((host, port), timeout=TIMEOUT) as raw,
                context.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                cipher = tls.cipher()
        except (ssl.SSLError, OSError):
            continue
        if cipher is not None and cipher[0] == name:
            accepted.append(name)
    return accepted


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "ports":
        print("\n".join(str(port) for port in open_ports(args[0], int(args[1]), int(args[2]))))
    elif command == "hello":
        host, port, server_name, version, *suites = args
        print(
            hello(
                host, int(port), server_name, int(version, 16), [int(suite, 16) for suite in suites]
            )
        )
    elif command == "ciphers":
        host, port, server_name, *names = args
        print("\n".join(accepted_ciphers(host, int(port), server_name, names)))
    else:
        print(f"unknown probe {command}", file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
