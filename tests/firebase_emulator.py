"""pytest plugin: the real Firebase Auth Emulator, started once per test run.

`firebase_emulator` (session) runs `firebase emulators:start --only auth` from the pinned
firebase-tools in `tests/firebase/node_modules` (installed by `make node-deps`) on free loopback
ports, with a `demo-` project id (demo projects never touch real Firebase). It creates users and
custom claims through the emulator's Identity Toolkit REST API and signs them in, so tests send real
emulator-issued ID tokens. `tokens` (session) holds one signed-in user per role plus one without a role.

REST reference: https://firebase.google.com/docs/reference/rest/auth and
https://firebase.google.com/docs/emulator-suite/connect_auth (the emulator accepts `Bearer owner` as
admin credentials and signs nothing: its ID tokens carry `alg: none`).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

FIREBASE_DIR = Path(__file__).resolve().parent / "firebase"
FIREBASE_CLI = FIREBASE_DIR / "node_modules" / ".bin" / "firebase"
PROJECT_ID = "demo-pat-test"
OTHER_PROJECT_ID = "demo-other"
START_TIMEOUT_S = 90
PASSWORD = "emulator-only-password"
ROLES = ("clinician", "service", "admin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


@dataclass
class FirebaseEmulator:
    """A running Auth Emulator and the operations tests need on it."""

    host: str
    project_id: str

    @property
    def base_url(self) -> str:
        return f"http://{self.host}/identitytoolkit.googleapis.com/v1"

    def _admin(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        response = httpx.post(
            f"{self.base_url}/projects/{self.project_id}/{operation}",
            json=body,
            headers={"Authorization": "Bearer owner"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def create_user(self, uid: str, *, role: str | None = None, disabled: bool = False) -> str:
        """Create (or replace) a user with `pat_role` = `role`, sign them in and return their real ID
        token. `disabled=True` disables the account after sign-in (a disabled user cannot sign in)."""
        self.delete_user(uid)
        email = f"{uid}@example.test"
        self._admin("accounts", {"localId": uid, "email": email, "password": PASSWORD})
        if role is not None:
            self._admin(
                "accounts:update", {"localId": uid, "customAttributes": json.dumps({"pat_role": role})}
            )
        response = httpx.post(
            f"{self.base_url}/accounts:signInWithPassword",
            params={"key": "emulator-api-key"},
            json={"email": email, "password": PASSWORD, "returnSecureToken": True},
            timeout=30,
        )
        response.raise_for_status()
        token = response.json()["idToken"]
        if disabled:
            self.disable(uid)
        return token

    def delete_user(self, uid: str) -> None:
        response = httpx.post(
            f"{self.base_url}/projects/{self.project_id}/accounts:delete",
            json={"localId": uid},
            headers={"Authorization": "Bearer owner"},
            timeout=30,
        )
        if response.status_code != 400:  # 400 USER_NOT_FOUND: nothing to delete
            response.raise_for_status()

    def revoke(self, uid: str) -> None:
        """Revoke the user's refresh tokens now (what `auth.revoke_refresh_tokens` does): ID tokens
        issued before this second are revoked, so only tokens at least 1 s old are affected."""
        self.set_valid_since(uid, int(time.time()))

    def set_valid_since(self, uid: str, timestamp: int) -> None:
        """Tokens issued before `timestamp` (epoch seconds) count as revoked. A new user's is its
        creation time; set it earlier to let a back-dated forged token through the revocation check."""
        self._admin("accounts:update", {"localId": uid, "validSince": str(timestamp)})

    def disable(self, uid: str) -> None:
        self._admin("accounts:update", {"localId": uid, "disableUser": True})

    def forged_token(
        self,
        uid: str,
        *,
        project: str | None = None,
        exp: int | None = None,
        iat: int | None = None,
        role: str | None = None,
    ) -> str:
        """An unsigned token shaped exactly like the emulator's own, with chosen claims: what an
        attacker can send to a server that (wrongly) trusts the emulator. For the expired and
        other-project cases the emulator cannot issue."""
        project = project or self.project_id
        if iat is not None:
            issued = iat
        elif exp is not None:
            issued = exp - 3600  # Firebase ID tokens live one hour
        else:
            issued = int(time.time())
        payload: dict[str, object] = {
            "iss": f"https://securetoken.google.com/{project}",
            "aud": project,
            "auth_time": issued,
            "user_id": uid,
            "sub": uid,
            "iat": issued,
            "exp": exp if exp is not None else issued + 3600,
            "firebase": {"identities": {}, "sign_in_provider": "password"},
        }
        if role is not None:
            payload["pat_role"] = role
        return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(payload)}."

    def env(self) -> dict[str, str]:
        """What a server process needs to accept this emulator's tokens."""
        return {
            "FIREBASE_AUTH_EMULATOR_HOST": self.host,
            "PAT_ALLOW_AUTH_EMULATOR": "1",
            "GOOGLE_CLOUD_PROJECT": self.project_id,
        }


def _write_config(workdir: Path) -> Path:
    """`tests/firebase/firebase.json` with free ports, so parallel runs on one machine never clash."""
    config = json.loads((FIREBASE_DIR / "firebase.json").read_text())
    emulators = config["emulators"]
    for name in ("auth", "hub", "logging"):
        emulators[name] = {**emulators.get(name, {}), "host": "127.0.0.1", "port": free_port()}
    path = workdir / "firebase.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _wait_ready(emulator: FirebaseEmulator, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the Auth Emulator exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            config_url = f"http://{emulator.host}/emulator/v1/projects/{emulator.project_id}/config"
            if httpx.get(config_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"the Auth Emulator was not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    # SIGINT is the CLI's own clean shutdown; it started in its own session, so the group is ours.
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def firebase_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirebaseEmulator]:
    if not FIREBASE_CLI.exists():
        pytest.skip(
            f"firebase-tools is not installed in {FIREBASE_DIR}: run `make node-deps` "
            "(npm ci --omit=optional in tests/firebase) to test against the Auth Emulator"
        )
    workdir = tmp_path_factory.mktemp("firebase-emulator")
    config = _write_config(workdir)
    auth = json.loads(config.read_text())["emulators"]["auth"]
    emulator = FirebaseEmulator(host=f"{auth['host']}:{auth['port']}", project_id=PROJECT_ID)
    log = workdir / "emulator.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(FIREBASE_CLI),
                "emulators:start",
                "--only",
                "auth",
                "--project",
                PROJECT_ID,
                "--config",
                str(config),
            ],
            cwd=workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # firebase-tools keeps its config store under $HOME; a private one keeps runs independent.
            env={**os.environ, "HOME": str(workdir), "NO_UPDATE_NOTIFIER": "1", "CI": "true"},
            start_new_session=True,
        )
    try:
        _wait_ready(emulator, process, log)
        yield emulator
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def tokens(firebase_emulator: FirebaseEmulator) -> dict[str, str]:
    """Real ID tokens: one user per role (`clinician`, `service`, `admin`) and one without (`none`)."""
    issued = {role: firebase_emulator.create_user(f"test-{role}", role=role) for role in ROLES}
    issued["none"] = firebase_emulator.create_user("test-no-role")
    return issued
