"""The image secret scan (`scripts/image_scan.py`, run on the real image by the container check) on
docker-archive tars built here: planted key material in the env or a layer is found, the usual
look-alikes (TLS libraries' PEM header strings, docstring placeholders) are not."""

from __future__ import annotations

import base64
import io
import json
import secrets
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scripts.image_scan import main, scan_archive


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_tar(path: Path, *, env: list[str], files: dict[str, bytes]) -> Path:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for name, data in files.items():
            _add(tar, name, data)
    config = {"config": {"Env": env}}
    with tarfile.open(path, "w") as archive:
        _add(archive, "config.json", json.dumps(config).encode())
        _add(archive, "layer.tar", layer.getvalue())
        manifest = [{"Config": "config.json", "Layers": ["layer.tar"], "RepoTags": ["t:ci"]}]
        _add(archive, "manifest.json", json.dumps(manifest).encode())
    return path


BENIGN = {
    "usr/lib/libgnutls.so": b"\x00-----BEGIN RSA PRIVATE KEY-----\x00-----BEGIN PRIVATE KEY-----\n\x00",
    "app/redis/client.py": b'"""redis://[[username]:[password]]@localhost:6379/0"""',
    "app/settings.py": b"cache_keys: str = Field('')  # PAT_CACHE_KEYS",
}


def test_clean_image_passes(tmp_path: Path) -> None:
    tar = image_tar(tmp_path / "clean.tar", env=["PATH=/usr/bin", "PAT_HOST=0.0.0.0"], files=BENIGN)
    assert scan_archive(tar) == []
    assert main([str(tar)]) == 0


def test_planted_key_material_is_found(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keyring = f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
    files = {
        **BENIGN,
        "home/bentoml/bento/src/tls.pem": key,
        "home/bentoml/bento/src/firebase.json": b'{"type": "service_account", "private_key_id": "x"}',
        "home/bentoml/bento/src/.env": f"PAT_CACHE_KEYS={keyring}\n".encode(),
    }
    env = [
        "PATH=/usr/bin",
        f"PAT_CACHE_KEYS={keyring}",
        "PAT_REDIS_URL=rediss://:hunter2hunter2@redis:6380/0",
    ]
    tar = image_tar(tmp_path / "leaky.tar", env=env, files=files)
    found = {str(f) for f in scan_archive(tar)}
    assert "image env PAT_CACHE_KEYS: secret setting with a value" in found
    assert "image env PAT_REDIS_URL: Redis URL with password" in found
    assert "layer.tar:home/bentoml/bento/src/tls.pem: PEM private key" in found
    assert "layer.tar:home/bentoml/bento/src/firebase.json: service-account JSON" in found
    assert "layer.tar:home/bentoml/bento/src/.env: secret setting assignment" in found
    assert not any("libgnutls" in f or "redis/client" in f for f in found)
    assert main([str(tar)]) == 1
