"""AES-GCM sealing of cache values, key rotation, HMAC cache keys and the key-material checks."""

from __future__ import annotations

import base64
import logging
import re
import secrets
import subprocess
import sys

import pytest

from pat_runner.cache.crypto import (
    CacheCipher,
    CacheConfigError,
    KeyedHasher,
    UndecryptableValue,
    generate_settings,
    main,
    parse_cipher_keys,
    parse_hmac_key,
    secrets_from_settings,
)
from tests.factories import make_settings

PLAINTEXT = b'{"metrics":{"total_sleep_minutes":431.0},"pat":{"windows":[0.125]}}'
CACHE_KEY = "pat:0123:abcd"
LONG_BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}")


def new_key(kid: str) -> tuple[str, bytes]:
    return kid, secrets.token_bytes(32)


def key_spec(*keys: tuple[str, bytes]) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keys)


def test_round_trip_and_stored_form() -> None:
    cipher = CacheCipher([new_key("k1")])
    blob = cipher.encrypt(PLAINTEXT, cache_key=CACHE_KEY)
    assert blob.startswith(b"v1|k1|")
    assert PLAINTEXT not in blob and b"total_sleep_minutes" not in blob
    # 12-byte nonce + ciphertext + 16-byte tag after the header
    assert len(blob) == len(b"v1|k1|") + 12 + len(PLAINTEXT) + 16
    assert cipher.decrypt(blob, cache_key=CACHE_KEY) == PLAINTEXT
    # a fresh nonce per value: the same plaintext never seals to the same bytes
    assert cipher.encrypt(PLAINTEXT, cache_key=CACHE_KEY) != blob


def test_value_is_bound_to_its_cache_key() -> None:
    cipher = CacheCipher([new_key("k1")])
    blob = cipher.encrypt(PLAINTEXT, cache_key=CACHE_KEY)
    with pytest.raises(UndecryptableValue, match="authentication failed"):
        cipher.decrypt(blob, cache_key="pat:0123:other")


def test_wrong_key_unknown_key_id_and_tampering_are_refused() -> None:
    blob = CacheCipher([new_key("k1")]).encrypt(PLAINTEXT, cache_key=CACHE_KEY)
    with pytest.raises(UndecryptableValue, match="authentication failed"):
        CacheCipher([new_key("k1")]).decrypt(blob, cache_key=CACHE_KEY)
    with pytest.raises(UndecryptableValue, match="unknown key id 'k1'"):
        CacheCipher([new_key("k2")]).decrypt(blob, cache_key=CACHE_KEY)
    cipher = CacheCipher([new_key("k1")])
    sealed = bytearray(cipher.encrypt(PLAINTEXT, cache_key=CACHE_KEY))
    sealed[-1] ^= 0x01
    with pytest.raises(UndecryptableValue):
        cipher.decrypt(bytes(sealed), cache_key=CACHE_KEY)
    # the key id is authenticated: relabelling a value, even for the same key bytes, breaks it
    shared_key = secrets.token_bytes(32)
    relabelled = (
        CacheCipher([("k1", shared_key)])
        .encrypt(PLAINTEXT, cache_key=CACHE_KEY)
        .replace(b"v1|k1|", b"v1|k9|", 1)
    )
    with pytest.raises(UndecryptableValue, match="authentication failed"):
        CacheCipher([("k9", shared_key)]).decrypt(relabelled, cache_key=CACHE_KEY)
    with pytest.raises(UndecryptableValue, match="not a v1"):
        cipher.decrypt(PLAINTEXT, cache_key=CACHE_KEY)


def test_rotation_old_key_decrypts_new_key_encrypts() -> None:
    old, new = new_key("2024a"), new_key("2025a")
    before = CacheCipher(parse_cipher_keys(key_spec(old)))
    during = CacheCipher(parse_cipher_keys(key_spec(new, old)))
    after = CacheCipher(parse_cipher_keys(key_spec(new)))
    old_blob = before.encrypt(PLAINTEXT, cache_key=CACHE_KEY)
    assert during.decrypt(old_blob, cache_key=CACHE_KEY) == PLAINTEXT
    new_blob = during.encrypt(PLAINTEXT, cache_key=CACHE_KEY)
    assert new_blob.startswith(b"v1|2025a|")
    assert after.decrypt(new_blob, cache_key=CACHE_KEY) == PLAINTEXT
    with pytest.raises(UndecryptableValue, match="unknown key id '2024a'"):
        after.decrypt(old_blob, cache_key=CACHE_KEY)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k1", "kid:base64key"),
        ("bad|id:" + base64.b64encode(bytes(32)).decode(), "kid:base64key"),
        ("k1:not-base64!", "not valid base64"),
        ("k1:" + base64.b64encode(bytes(16)).decode(), "must decode to 32 bytes"),
        (key_spec(("k1", bytes(32)), ("k1", bytes(range(32)))), "twice"),
    ],
)
def test_malformed_cipher_keys_are_rejected(spec: str, message: str) -> None:
    with pytest.raises(CacheConfigError, match=message):
        parse_cipher_keys(spec)


def test_hmac_key_needs_32_bytes() -> None:
    with pytest.raises(CacheConfigError, match="at least 32 bytes"):
        parse_hmac_key(base64.b64encode(bytes(16)).decode())
    assert parse_hmac_key(base64.b64encode(bytes(32)).decode()) == bytes(32)


def test_keyed_hash_is_length_prefixed_and_key_dependent() -> None:
    hasher = KeyedHasher(secrets.token_bytes(32))
    assert hasher.hexdigest(b"ab", b"c") != hasher.hexdigest(b"a", b"bc")
    assert hasher.hexdigest(b"ab", b"c") == hasher.hexdigest(b"ab", b"c")
    assert KeyedHasher(secrets.token_bytes(32)).hexdigest(b"ab", b"c") != hasher.hexdigest(b"ab", b"c")
    assert len(hasher.hexdigest(b"x")) == 64


def test_shared_cache_fails_closed_without_keys() -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(CacheConfigError, match="PAT_CACHE_KEYS and PAT_CACHE_HMAC_KEY are not"):
        secrets_from_settings(settings, shared_cache=True)
    only_cipher = settings.replace(cache_keys=key_spec(new_key("k1")))
    with pytest.raises(CacheConfigError, match="PAT_CACHE_HMAC_KEY is not"):
        secrets_from_settings(only_cipher, shared_cache=True)


def test_embedded_cache_generates_ephemeral_keys_and_never_logs_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings()
    with caplog.at_level(logging.WARNING, logger="pat_runner.cache.crypto"):
        first = secrets_from_settings(settings, shared_cache=False)
        second = secrets_from_settings(settings, shared_cache=False)
    assert first.ephemeral and second.ephemeral
    assert first.cipher.active_key_id == "ephemeral"
    blob = first.cipher.encrypt(PLAINTEXT, cache_key=CACHE_KEY)
    with pytest.raises(UndecryptableValue):
        second.cipher.decrypt(blob, cache_key=CACHE_KEY)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert all(not LONG_BASE64.search(r.getMessage()) for r in caplog.records)


def test_configured_keys_are_used() -> None:
    generated = generate_settings("k2026")
    settings = make_settings(
        cache_keys=generated["PAT_CACHE_KEYS"], cache_hmac_key=generated["PAT_CACHE_HMAC_KEY"]
    )
    loaded = secrets_from_settings(settings, shared_cache=True)
    assert not loaded.ephemeral
    assert loaded.cipher.active_key_id == "k2026"


def test_generator_prints_settings_lines(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--generate", "--key-id", "k1"])
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"PAT_CACHE_KEYS", "PAT_CACHE_HMAC_KEY"}
    assert parse_cipher_keys(lines["PAT_CACHE_KEYS"])[0][0] == "k1"
    assert len(parse_hmac_key(lines["PAT_CACHE_HMAC_KEY"])) == 32


def test_generator_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pat_runner.cache.crypto", "--generate"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("PAT_CACHE_KEYS=k")
    assert "PAT_CACHE_HMAC_KEY=" in done.stdout
