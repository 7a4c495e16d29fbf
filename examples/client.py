"""How a health data service calls the PAT service: copy this file and adapt `load_week`.

    PAT_URL=https://pat.internal.example:3000 PAT_TOKEN="$(get-firebase-id-token)" \
        python examples/client.py

`bentoml.SyncHTTPClient` reads the service's schema at `/schema.json` and exposes one method per
endpoint (`analyze`, `analyze_batch`, `embed`, `analyze_file`, `models`, `invalidate_cache`) taking the
same keyword arguments as the JSON body. `PAT_TOKEN` is a Firebase ID token of a caller whose custom
claim `pat_role` is `service` or `clinician`; the quick-start server (`make serve`) needs none.
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


if __name__ == "__main__":
    main()
