"""The README's quick start: import the PAT weights found in `models/` (or the labelled demo model) into
the BentoML model store, then serve the whole service on http://127.0.0.1:3000 for local exploration.

Authentication is disabled here (a loopback-bound developer server only); production sets Firebase
configuration instead (docs/security.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.local_server import BENTOML, SERVE_KEEP_ALIVE  # noqa: E402
from scripts.quickstart_models import prepare_models  # noqa: E402


def main() -> None:
    tag = os.environ.get("PAT_MODEL_TAG") or prepare_models(str(ROOT / "models"))
    env = {
        **os.environ,
        "PAT_MODEL_TAG": tag,
        "PAT_AUTH": os.environ.get("PAT_AUTH", "disabled"),
        "PAT_HOST": "127.0.0.1",
        "PAT_PROTECT_DOCS": os.environ.get("PAT_PROTECT_DOCS", "false"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    port = os.environ.get("PAT_PORT", "3000")
    print(
        f"Serving {tag} on http://127.0.0.1:{port} (Swagger UI at /, API under /v1). Ctrl-C stops.",
        flush=True,
    )
    os.chdir(ROOT)
    os.execve(BENTOML, [BENTOML, "serve", ".", "--host", "127.0.0.1", "--port", port, *SERVE_KEEP_ALIVE], env)


if __name__ == "__main__":
    main()
