"""Write the service's OpenAPI document to docs/openapi.json (or check it is current with --check).

The document is generated from `service.PATService` exactly as the running server serves it at
`/docs.json`; a test compares the committed file with a live server's, so run this after changing
an endpoint or a schema:  .venv/bin/python scripts/export_openapi.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "openapi.json"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    # The document does not depend on how callers authenticate; importing the service checks that.
    os.environ.setdefault("PAT_AUTH", "disabled")
    from pat_runner.serving.openapi import enrich
    from service import PATService, settings

    return json.dumps(enrich(PATService.openapi_spec.asdict(), settings), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/openapi.json is stale")
    args = parser.parse_args()
    document = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != document:
            print(f"{TARGET.relative_to(ROOT)} is stale: run scripts/export_openapi.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(document)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
