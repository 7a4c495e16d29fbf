"""Encryption at rest for cached results and keyed hashes for cache keys.

- `CacheCipher`: AES-256-GCM (NIST SP 800-38D) through `cryptography`'s `AESGCM`. Every value carries
  the id of the key that sealed it, so keys rotate without flushing the cache: the first configured key
  encrypts, every configured key decrypts. The cache key is bound to the value as associated data, so a
  value copied under another key does not decrypt.
- `KeyedHasher`: HMAC-SHA256 (RFC 2104) so a cache key reveals nothing about the recording or subject
  and cannot be recomputed by someone who can read Redis but does not hold the HMAC key.

Key material comes from the environment (`PAT_CACHE_KEYS`, `PAT_CACHE_HMAC_KEY`); generate it with
`python -m pat_runner.cache.crypto --generate`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pat_runner.settings import Settings

logger = logging.getLogger(__name__)

FORMAT_VERSION = b"v1"
NONCE_BYTES = 12  # the GCM nonce length SP 800-38D recommends for random nonces
AES_KEY_BYTES = 32
HMAC_KEY_MIN_BYTES = 32  # RFC 2104 §3: shorter than the hash output weakens the MAC
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class CacheConfigError(ValueError):
    """The cache's key material is missing or malformed; the service must not start."""


class UndecryptableValue(Exception):
    """A cached value cannot be opened: unknown key id, wrong key, tampering or a foreign format."""


def _decode_key(name: str, encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CacheConfigError(f"{name} is not valid base64") from exc


def parse_cipher_keys(spec: str) -> list[tuple[str, bytes]]:
    """Parse `"kid:base64key[,kid:base64key...]"` into (key id, 32-byte key) pairs, order kept."""
    keys: list[tuple[str, bytes]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not _KEY_ID.match(kid):
            raise CacheConfigError(
                "PAT_CACHE_KEYS entries must look like 'kid:base64key' with a key id of 1-32 "
                "characters from [A-Za-z0-9._-]"
            )
        key = _decode_key(f"PAT_CACHE_KEYS key {kid!r}", encoded.strip())
        if len(key) != AES_KEY_BYTES:
            raise CacheConfigError(
                f"PAT_CACHE_KEYS key {kid!r} must decode to {AES_KEY_BYTES} bytes, got {len(key)}"
            )
        if any(existing == kid for existing, _ in keys):
            raise CacheConfigError(f"PAT_CACHE_KEYS lists key id {kid!r} twice")
        keys.append((kid, key))
    return keys


def parse_hmac_key(encoded: str) -> bytes:
    key = _decode_key("PAT_CACHE_HMAC_KEY", encoded)
    if len(key) < HMAC_KEY_MIN_BYTES:
        raise CacheConfigError(f"PAT_CACHE_HMAC_KEY must decode to at least {HMAC_KEY_MIN_BYTES} bytes")
    return key


class CacheCipher:
    """AES-GCM sealing of cache values: `v1|kid|nonce‖ciphertext‖tag`, the cache key as associated data."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise CacheConfigError("CacheCipher needs at least one key")
        self._active_kid = keys[0][0]
        self._aeads = {kid: AESGCM(key) for kid, key in keys}

    @property
    def active_key_id(self) -> str:
        return self._active_kid

    @staticmethod
    def _associated_data(kid: str, cache_key: str) -> bytes:
        # The header is authenticated too, so a value cannot be relabelled with another key id.
        return FORMAT_VERSION + b"|" + kid.encode() + b"|" + cache_key.encode()

    def encrypt(self, plaintext: bytes, *, cache_key: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[self._active_kid].encrypt(
            nonce, plaintext, self._associated_data(self._active_kid, cache_key)
        )
        return FORMAT_VERSION + b"|" + self._active_kid.encode() + b"|" + nonce + sealed

    def decrypt(self, blob: bytes, *, cache_key: str) -> bytes:
        version, sep1, rest = blob.partition(b"|")
        kid_bytes, sep2, body = rest.partition(b"|")
        if version != FORMAT_VERSION or not sep1 or not sep2 or len(body) <= NONCE_BYTES:
            raise UndecryptableValue("not a v1 cache value")
        kid = kid_bytes.decode("ascii", errors="replace")
        aead = self._aeads.get(kid)
        if aead is None:
            raise UndecryptableValue(f"value sealed with unknown key id {kid!r}")
        try:
            return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], self._associated_data(kid, cache_key))
        except InvalidTag as exc:
            raise UndecryptableValue(f"authentication failed for key id {kid!r}") from exc


class KeyedHasher:
    """HMAC-SHA256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") never collide."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def hexdigest(self, *parts: bytes) -> str:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.hexdigest()


@dataclass(frozen=True)
class CacheSecrets:
    cipher: CacheCipher
    hasher: KeyedHasher
    ephemeral: bool


def secrets_from_settings(settings: Settings, *, shared_cache: bool) -> CacheSecrets:
    """Build cipher and hasher from the settings.

    A shared cache (Redis) fails closed without configured keys: workers and pods that generate their
    own keys could neither read each other's values nor agree on cache keys. The embedded cache lives
    and dies with the process, so a random per-process key is safe there.
    """
    cipher_keys = parse_cipher_keys(settings.cache_keys)
    hmac_key = parse_hmac_key(settings.cache_hmac_key) if settings.cache_hmac_key else None
    if cipher_keys and hmac_key is not None:
        return CacheSecrets(CacheCipher(cipher_keys), KeyedHasher(hmac_key), ephemeral=False)
    if shared_cache:
        missing = [
            name
            for name, present in (("PAT_CACHE_KEYS", bool(cipher_keys)), ("PAT_CACHE_HMAC_KEY", hmac_key))
            if not present
        ]
        raise CacheConfigError(
            f"PAT_REDIS_URL is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            "a shared cache needs the same keys in every worker and pod. "
            "Generate them with `python -m pat_runner.cache.crypto --generate`."
        )
    logger.warning(
        "cache keys not configured: the embedded cache uses a random key for this process only "
        "(set PAT_CACHE_KEYS and PAT_CACHE_HMAC_KEY to fix them)"
    )
    return CacheSecrets(
        CacheCipher(cipher_keys or [("ephemeral", AESGCM.generate_key(bit_length=256))]),
        KeyedHasher(hmac_key or secrets.token_bytes(HMAC_KEY_MIN_BYTES)),
        ephemeral=True,
    )


def generate_settings(key_id: str) -> dict[str, str]:
    """Fresh key material in the format the settings expect."""
    if not _KEY_ID.match(key_id):
        raise CacheConfigError("key id must be 1-32 characters from [A-Za-z0-9._-]")
    cipher_key = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
    hmac_key = base64.b64encode(secrets.token_bytes(HMAC_KEY_MIN_BYTES)).decode()
    return {"PAT_CACHE_KEYS": f"{key_id}:{cipher_key}", "PAT_CACHE_HMAC_KEY": hmac_key}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pat_runner.cache.crypto", description="Generate cache encryption and HMAC keys."
    )
    parser.add_argument("--generate", action="store_true", required=True, help="print new keys as env lines")
    parser.add_argument("--key-id", default=f"k{secrets.token_hex(3)}", help="id of the new encryption key")
    args = parser.parse_args(argv)
    for name, value in generate_settings(args.key_id).items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
