"""Convert a Keras PAT `.h5` file and save it in the BentoML model store; prints the model tag.

    python scripts/import_weights.py models/PAT-M_29k_weights.h5 [--name pat-m] [--scaler scaler.npz]

Re-importing the same file (same bytes, scaler and task) prints the tag of the model already stored.
A bad file exits with status 2 and a message naming the file (and the tensor at fault).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.model.keras_h5 import WeightsError  # noqa: E402
from pat_runner.model.store import import_h5, read_model_info  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="Keras H5 file: save_weights, model.save or a fine-tuned classifier")
    parser.add_argument(
        "--name", help="model name in the store (default: pat-s/pat-m/pat-l, pat-<size>-<task>)"
    )
    parser.add_argument("--scaler", help=".npz cohort scaler with mean_/scale_ (or mean/scale), length 10080")
    parser.add_argument("--task", help="what a fine-tuned head predicts, e.g. depression (names the model)")
    parser.add_argument("--dataset", help="pre-training cohort (recognised for the released files)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = import_h5(
            args.path, name=args.name, scaler_path=args.scaler, head_task=args.task, dataset=args.dataset
        )
    except (WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = read_model_info(model)
    head = f", head task {info.head_task or 'unnamed'}" if info.layout == "finetuned" else ""
    print(
        f"imported {info.source_file}: PAT-{info.size}, {info.layout}{head}, "
        f"scaler: {'yes' if info.has_scaler else 'no'}, tag {info.tag}",
        file=sys.stderr,
    )
    print(info.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
