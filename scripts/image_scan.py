"""Scan a container image (`podman save --format docker-archive` tar) for baked-in secrets: the image
config's environment and every file of every layer.

    python scripts/image_scan.py image.tar      # exit 1 and one line per finding if anything is found

Key material here means private keys (PEM, OpenSSH), Google service-account JSON, the service's own
secret settings (cache keyring, HMAC key, Redis URL or password, TLS key file) with a value, and Redis
URLs with a password. Findings name the layer, path and pattern, never the matched text.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Settings that must only ever come from a Secret at run time (docs/security.md).
SECRET_ENV = frozenset(
    {
        "PAT_CACHE_KEYS",
        "PAT_CACHE_HMAC_KEY",
        "PAT_REDIS_URL",
        "PAT_REDIS_PASSWORD",
        "PAT_TLS_KEYFILE",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "FIREBASE_CONFIG",
    }
)
CONTENT_PATTERNS = {
    # A whole PEM block (base64 lines up to the matching END line), not just the header strings that
    # TLS libraries carry.
    "PEM private key": re.compile(
        rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----\r?\n(?:[A-Za-z-]+: [^\r\n]*\r?\n)*\r?\n?"
        rb"(?:[A-Za-z0-9+/]{40,}\r?\n)+[A-Za-z0-9+/=]{0,80}\r?\n-----END \1-----"
    ),
    "service-account JSON": re.compile(rb'"type"\s*:\s*"service_account"'),
    # Placeholders in docstrings ("[password]", "<password>", "{password}") are not passwords.
    "Redis URL with password": re.compile(rb"rediss?://[^\s:@/\"'\[\]<>{}]*:[^\s@/\"'\[\]<>{}]{6,}@"),
    "secret setting assignment": re.compile(
        rb"\b(?:PAT_CACHE_KEYS|PAT_CACHE_HMAC_KEY|PAT_REDIS_PASSWORD)\s*[=:]\s*['\"]?(?:[\w-]+:)?[A-Za-z0-9+/]{20,}"
    ),
}
SUSPICIOUS_NAMES = re.compile(r"(?:^|/)(?:id_rsa|id_ed25519|.*\.key|service[-_]account.*\.json|\.env)$")
MAX_SCANNED_BYTES = 16 * 2**20
# Third-party files that are known, public test fixtures: reported as allowed, never as findings.
ALLOWED = {
    re.compile(r"site-packages/tornado/test/test\.key$"): "tornado's test-suite key, public in its repo",
    re.compile(r"/libgnutls\.so[.0-9]*$"): "GnuTLS's built-in self-test keys (gnutls_pk_self_test)",
}


@dataclass(frozen=True)
class Finding:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def scan_env(env: list[str]) -> Iterator[Finding]:
    for item in env:
        name, _, value = item.partition("=")
        if name in SECRET_ENV and value:
            yield Finding(f"image env {name}", "secret setting with a value")
        for label, pattern in CONTENT_PATTERNS.items():
            if pattern.search(value.encode()):
                yield Finding(f"image env {name}", label)


def allowed(path: str) -> str | None:
    return next((reason for pattern, reason in ALLOWED.items() if pattern.search(path)), None)


def scan_layer(name: str, layer: IO[bytes]) -> Iterator[Finding]:
    with tarfile.open(fileobj=layer, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            if reason := allowed(member.name):
                print(f"allowed: {name}:{member.name} ({reason})")
                continue
            if SUSPICIOUS_NAMES.search(member.name) and member.size > 0:
                yield Finding(f"{name}:{member.name}", "file name of a key or credentials file")
            if member.size > MAX_SCANNED_BYTES:
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle else b""
            for label, pattern in CONTENT_PATTERNS.items():
                if pattern.search(data):
                    yield Finding(f"{name}:{member.name}", label)


def scan_archive(path: str | Path) -> list[Finding]:
    """All findings in a docker-archive image tar (manifest.json, config JSON, layer tars)."""
    findings: list[Finding] = []
    with tarfile.open(path) as archive:
        (manifest,) = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(archive.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        findings.extend(scan_env(config.get("config", {}).get("Env") or []))
        for layer_name in manifest["Layers"]:
            layer = archive.extractfile(layer_name)
            if layer is not None:
                findings.extend(scan_layer(layer_name, layer))
    return findings


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    findings = scan_archive(paths[0])
    for finding in findings:
        print(f"key material: {finding}")
    if findings:
        return 1
    print(f"no key material in {paths[0]} (env and every layer file up to {MAX_SCANNED_BYTES >> 20} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
