"""Put a PAT into the BentoML model store for the quick start and say which tag to serve.

Every `*.h5` in `models/` is imported (idempotently). Without any, the seeded random PAT-S demo model is
stored instead, with a loud notice that it is not a trained model and where the official weights are.

    python scripts/quickstart_models.py [models_dir]     # prints the tag to serve
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.model.store import ensure_demo_model, import_h5, read_model_info  # noqa: E402

# The download links of the PAT README ("PAT Encoders Weights Download"), CC-BY-4.0.
OFFICIAL_WEIGHTS = {
    "PAT-S_29k_weights.h5": "https://www.dropbox.com/scl/fi/12ip8owx1psc4o7b2uqff/PAT-S_29k_weights.h5?rlkey=ffaf1z45a74cbxrl7c9i2b32h&st=mfk6f0y5&dl=1",
    "PAT-M_29k_weights.h5": "https://www.dropbox.com/scl/fi/hlfbni5bzsfq0pynarjcn/PAT-M_29k_weights.h5?rlkey=frbkjtbgliy9vq2kvzkquruvg&st=mxc4uet9&dl=1",
    "PAT-L_29k_weights.h5": "https://www.dropbox.com/scl/fi/exk40hu1nxc1zr1prqrtp/PAT-L_29k_weights.h5?rlkey=t1e5h54oob0e1k4frqzjt1kmz&st=7a20pcox&dl=1",
}
PAT_README = (
    "https://github.com/njacobsonlab/Pretrained-Actigraphy-Transformer#-pat-encoders-weights-download"
)

# Serve the largest imported encoder by default; a fine-tuned head wins over a bare encoder.
_PREFERENCE = {"L": 3, "M": 2, "S": 1}


def demo_banner() -> str:
    links = "\n".join(f"      {name}: {url}" for name, url in OFFICIAL_WEIGHTS.items())
    line = "!" * 100
    return (
        f"{line}\n"
        "!!  NO PAT WEIGHTS FOUND in models/ - serving the DEMO model: a randomly initialised PAT-S.\n"
        "!!  It is NOT a trained model: its embeddings and probabilities mean nothing (demo: true in\n"
        "!!  every response). The classical actigraphy metrics are real.\n"
        "!!  For the real model, download the official encoder weights (PAT README, CC-BY-4.0):\n"
        f"{links}\n"
        f"      (also the 21k files: {PAT_README})\n"
        "!!  put them in models/ and run the quick start again.\n"
        f"{line}"
    )


def prepare_models(models_dir: str = "models") -> str:
    """Import `models_dir/*.h5` (or the demo model) into the store; returns the tag to serve."""
    files = sorted(Path(models_dir).glob("*.h5"))
    if not files:
        print(demo_banner(), flush=True)
        return str(ensure_demo_model().tag)
    imported = []
    for path in files:
        info = read_model_info(import_h5(path))
        print(f"imported {path.name}: PAT-{info.size} ({info.layout}) as {info.tag}", flush=True)
        imported.append(info)
    chosen = max(
        imported,
        key=lambda info: (
            info.head_task is not None or info.layout == "finetuned",
            _PREFERENCE.get(info.size, 0),
        ),
    )
    return chosen.tag


if __name__ == "__main__":
    print(prepare_models(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "models")))
