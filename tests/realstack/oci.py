"""Deterministic OCI image layouts for the real-stack tests and the benchmark.

An image is a few tar layers (one file each, pseudo-random bytes from a seed), a
config and a manifest, written as an OCI layout that `skopeo copy oci:DIR:TAG ...` pushes. The
same seed gives the same bytes and so the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
_CHUNK = 4 << 20


@dataclass(frozen=True)
class OciImage:
    layout: Path
    tag: str
    manifest_digest: str
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]  # digests of the uncompressed layers

    @property
    def reference(self) -> str:
        """The `oci:` transport reference skopeo and podman take."""
        return f"oci:{self.layout}:{self.tag}"


def _write_blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}"


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as blob:
        while chunk := blob.read(_CHUNK):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


class _PseudoRandom(io.RawIOBase):
    """`size` bytes from a seeded generator, read in chunks (never all in memory)."""

    def __init__(self, size: int, seed: str) -> None:
        self.left = size
        self.generator = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left, _CHUNK)
        buffer[:count] = self.generator.randbytes(count)
        self.left -= count
        return count


class _HashingWriter(io.RawIOBase):
    """Passes writes through to `sink` while hashing and counting them."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.hasher = hashlib.sha256()
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hasher.update(data)
        self.sink.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


def _write_layer(blobs: Path, name: str, size: int, seed: str) -> tuple[str, int, str]:
    """A gzip'd tar holding one file of `size` pseudo-random bytes, streamed to disk.

    Gzip level 0 (stored blocks): registries and clients expect compressed layers (skopeo would
    otherwise compress, changing digests), and random bytes would not shrink anyway.
    Returns (digest, size, diff id)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    partial = blobs / f".{name}.partial"
    # Both digests while writing: of the gzip stream (the blob) and of the tar (the diff id).
    with partial.open("wb") as raw:
        blob = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=0, mtime=0) as compressed:
            tar_stream = _HashingWriter(compressed)  # type: ignore[arg-type]
            with tarfile.open(
                fileobj=tar_stream,
                mode="w",  # type: ignore[call-overload]
                format=tarfile.PAX_FORMAT,
            ) as tar:
                tar.addfile(
                    info,
                    io.BufferedReader(
                        _PseudoRandom(size, seed),  # type: ignore[type-var]
                        buffer_size=_CHUNK,
                    ),
                )
    digest = f"sha256:{blob.hasher.hexdigest()}"
    partial.rename(blobs / digest.split(":", 1)[1])
    return digest, blob.position, f"sha256:{tar_stream.hasher.hexdigest()}"


def build_image(layout: Path, tag: str, layer_sizes: list[int], seed: str) -> OciImage:
    """Write an OCI layout at `layout` with one layer per size; deterministic for a seed."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = [
        _write_layer(blobs, f"layer-{index}.bin", size, f"{seed}/{index}")
        for index, size in enumerate(layer_sizes)
    ]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"io.private-registry.test-seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, _, diff_id in layers]},
            "history": [{"created_by": f"test layer {index}"} for index in range(len(layers))],
        },
        sort_keys=True,
    ).encode()
    config_digest = _write_blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": size}
                for digest, size, _ in layers
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = _write_blob(blobs, manifest)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": MANIFEST_MEDIA_TYPE,
                        "digest": manifest_digest,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )
    return OciImage(
        layout=layout,
        tag=tag,
        manifest_digest=manifest_digest,
        layer_digests=tuple(digest for digest, _, _ in layers),
        diff_ids=tuple(diff_id for _, _, diff_id in layers),
    )


def layout_digests(layout: Path, tag: str) -> tuple[str, tuple[str, ...]]:
    """(manifest digest, layer digests) of a tag in an OCI layout, e.g. one skopeo pulled;
    every blob's bytes are re-hashed, so a corrupted pull fails here."""
    index = json.loads((layout / "index.json").read_text())
    entries = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    if len(entries) != 1:
        raise AssertionError(f"{layout}: expected one manifest tagged {tag}, found {len(entries)}")
    manifest_digest = entries[0]["digest"]
    blobs = layout / "blobs" / "sha256"

    def verified(digest: str) -> None:
        path = blobs / digest.split(":", 1)[1]
        if _sha256_file(path) != digest:
            raise AssertionError(f"{path}: content does not match its digest")

    verified(manifest_digest)
    manifest = json.loads((blobs / manifest_digest.split(":", 1)[1]).read_bytes())
    layers = tuple(layer["digest"] for layer in manifest["layers"])
    for digest in layers:
        verified(digest)
    return manifest_digest, layers
