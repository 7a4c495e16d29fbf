"""How a health data service calls the PAT service: copy this file and adapt `load_week`.

    PAT_URL=https://pat.internal.example:3000 PAT_TOKEN="$(get-firebase-id-token)" \
        python examples/client.py

`bentoml.SyncHTTPClient` reads the service's schema at `/schema.json` and exposes one method per
BentoML endpoint (`analyze`, `analyze_batch`, `embed`, `analyze_file`, `invalidate_cache`) taking the
same keyword arguments as the JSON body; unknown fields are refused (422 `validation_error`) as they are
over raw HTTP. `GET /v1/models` is a plain route: `client.request("GET", "/v1/models").json()`.
`analyze_file(file=Path("week.agd"), timezone="America/New_York", outputs=["metrics"])` uploads a device
export; `invalidate_cache(model_tag="")` needs the admin role. Usage guidelines: docs/api.md.
`PAT_TOKEN` is a Firebase ID token of a caller whose custom claim `pat_role` is `service` or
`clinician`; the quick-start server (`make serve`) needs none.
Errors arrive as `bentoml.exceptions.BentoMLException` whose message holds the JSON error body
`{"error": {"code": ..., "message": ..., "request_id": ...}}`.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import bentoml


def load_week() -> dict:
    """A synthetic week of 60-s counts (a day/night rhythm); replace with the wearer's real data."""
    zone = ZoneInfo("America/New_York")
    start = datetime(2024, 3, 4, tzinfo=zone)
    values: list[float | None] = []
    for minute in range(10_080):
        local_hour = (start + timedelta(minutes=minute)).hour
        awake = 7 <= local_hour < 23
        values.append(round(400 + 300 * math.sin(minute / 37.0)) if awake else 0.0)
    values[2_000:2_060] = [None] * 60  # an hour off-wrist
    return {
        "start": start.isoformat(),
        "timezone": "America/New_York",
        "epoch_seconds": 60,
        "values": values,
        "unit": "counts",
        "subject": "Patient/example-123",
    }


def main() -> None:
    url = os.environ.get("PAT_URL", "http://127.0.0.1:3000")
    token = os.environ.get("PAT_TOKEN") or None
    with bentoml.SyncHTTPClient(url, token=token, timeout=120) as client:
        result = client.analyze(recording=load_week(), options={"outputs": ["metrics", "pat", "fhir"]})
        print("model:", result["model"])
        print("quality:", result["quality"])
        print("interdaily stability:", result["metrics"]["interdaily_stability"])
        print("PAT windows:", len(result["pat"]["windows"]), "FHIR entries:", len(result["fhir"]["entry"]))
        print("warnings:", result["warnings"])
        # A nightly sync sends several recordings at once; each item has a result or its own error.
        batch = client.analyze_batch(recordings=[load_week(), load_week()], options={"outputs": ["metrics"]})
        print("batch:", [("ok" if item["result"] else item["error"]["code"]) for item in batch["results"]])
        embedding = client.embed(recording=load_week(), options={"per_patch": False})
        print("embedding size:", len(embedding["pat"]["windows"][0]["embedding"]))
        models = client.request("GET", "/v1/models").json()["models"]
        print("served model:", models[0]["tag"])


if __name__ == "__main__":
    main()
