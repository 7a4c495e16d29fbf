"""The original Keras PAT, rebuilt to benchmark the service against it and to check weight parity.

    python scripts/keras_reference.py check [--fixtures DIR]
    python scripts/keras_reference.py bench --size S --weights PAT-S.h5 --windows in.npy --out out.npy \
        [--batches 1 8] [--seconds 2] [--threads 2]

The network is the one the Dartmouth notebooks define (github.com/njacobsonlab/Pretrained-Actigraphy-
Transformer: `Pretraining/PAT_Pretraining.ipynb` builds the encoder and saves it as `encoder_model`,
`Fine-tuning/PAT_finetuning.ipynb` puts the classifier head on it), with the same layer names and
nesting, so `load_weights` reads the shared reference fixtures, which have the layout of the released
`PAT-*_29k_weights.h5` files, unchanged. It runs on Keras 2 (`tf_keras`), the Keras those notebooks ran
on; the `bench` extra installs it. A benchmark tool only: nothing in `pat_runner/` imports it, or tensorflow.

`check` rebuilds every fixture in `../shared/fixtures/pat_reference` and prints the largest difference
from the outputs the original Keras code gave. `bench` is the Keras child process of
`scripts/bench_model.py`: it times `model(x, training=False)` traced once per batch shape with
`tf.function` (the graph a SavedModel / TF Serving signature runs; no XLA) on copies of the first window,
and writes the embeddings of all windows to `--out` for the parity check against the PyTorch port. That
is the fastest way we found to run the original model for inference: on the 2-core dev VM it gave
1.5–2.4× the weeks/s of `predict_on_batch` at batch 1 (1.2–1.5× at batch 8) and 2–3× eager calls, so
the ratios to Keras that `bench_model.py` prints are not inflated by a slow Keras call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

# Before tensorflow loads: its C++ start-up chatter (CUDA probing on a CPU machine) is noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pat_runner.model import PAT_SIZES, WEEK_MINUTES  # noqa: E402  (torch-free constants)
from scripts.timing import time_batches  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "pat_reference"
EMBED_DIM = 96
FF_DIM = 256
DROPOUT = 0.1
HEAD_HIDDEN = 128


def positional_embeddings(patches: int, dim: int) -> tf.Tensor:
    """Sines of every position in the first half of the features, cosines in the second half.

    Computed in float32 with TF ops like the notebooks do: the saved models hold this constant, and a
    float64 version moves PAT-S's embeddings by 5e-5, more than the parity test's 1e-5."""
    frequencies = tf.exp(tf.range(0, dim, 2, dtype=tf.float32) * (-tf.math.log(10000.0) / dim))
    angles = tf.range(patches, dtype=tf.float32)[:, tf.newaxis] * frequencies[tf.newaxis, :]
    return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)


def transformer_block(num_heads: int, prefix: str) -> keras.Model:
    """One post-norm encoder block as a nested model named `<prefix>_transformer`; the H5 files group
    its weights under that name. Returns the block output and the attention scores."""
    block_in = layers.Input(shape=(None, EMBED_DIM), name=f"{prefix}_input")
    # key_dim is the full embedding width per head (not embed/heads): that is how PAT was trained.
    attention = layers.MultiHeadAttention(num_heads=num_heads, key_dim=EMBED_DIM, name=f"{prefix}_attention")
    attended, scores = attention(block_in, block_in, return_attention_scores=True)
    attended = layers.Dropout(DROPOUT, name=f"{prefix}_dropout")(attended)
    hidden = layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_norm1")(block_in + attended)
    fed = layers.Dense(FF_DIM, activation="relu", name=f"{prefix}_ff1")(hidden)
    fed = layers.Dense(EMBED_DIM, name=f"{prefix}_ff2")(fed)
    fed = layers.Dropout(DROPOUT, name=f"{prefix}_dropout2")(fed)
    block_out = layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_norm2")(hidden + fed)
    return keras.Model(block_in, [block_out, scores], name=f"{prefix}_transformer")


def build_encoder(size: str) -> keras.Model:
    """The pre-trained encoder as saved: a week in, per-patch embeddings and each block's attention out."""
    patch_size, num_layers, num_heads = PAT_SIZES[size]
    patches = WEEK_MINUTES // patch_size
    week = layers.Input(shape=(WEEK_MINUTES,), name="inputs")
    x = layers.Reshape((patches, patch_size), name="reshape")(week)
    x = layers.Dense(EMBED_DIM, name="dense")(x)
    x = x + positional_embeddings(patches, EMBED_DIM)
    all_scores = []
    for index in range(1, num_layers + 1):
        x, scores = transformer_block(num_heads, f"encoder_layer_{index}")(x)
        all_scores.append(scores)
    return keras.Model(week, [x, *all_scores], name="encoder_model")


def build_classifier(size: str) -> keras.Model:
    """The fine-tuned model: the encoder nested as one layer, then pooling, dropout and the dense head."""
    encoder = build_encoder(size)
    week = layers.Input(shape=(WEEK_MINUTES,), name="finetuning_inputs")
    pooled = layers.GlobalAveragePooling1D(name="global_avg_pool")(encoder(week)[0])
    pooled = layers.Dropout(DROPOUT, name="dropout")(pooled)
    hidden = layers.Dense(HEAD_HIDDEN, activation="relu", name="dense_128")(pooled)
    probability = layers.Dense(1, activation="sigmoid", name="output")(hidden)
    return keras.Model(week, probability, name="finetuning_model")


def load_encoder(size: str, weights: Path) -> keras.Model:
    encoder = build_encoder(size)
    encoder.load_weights(str(weights))
    return encoder


def load_classifier(size: str, weights: Path) -> keras.Model:
    classifier = build_classifier(size)
    classifier.load_weights(str(weights))
    return classifier


def embeddings_only(encoder: keras.Model) -> keras.Model:
    """The same layers with only the embeddings as output, as the fine-tuning model consumes them: the
    scores are still computed inside attention, but not copied out (PAT-L at batch 8 would hand back
    2 GB of them per call)."""
    return keras.Model(encoder.input, encoder.outputs[0], name="encoder_embeddings")


def check(fixtures: Path) -> dict[str, float]:
    """Largest absolute difference from each fixture's reference outputs."""
    diffs: dict[str, float] = {}
    for size in PAT_SIZES:
        reference = np.load(fixtures / f"PAT-{size}_random_seed0_reference.npz")
        embeddings, *scores = load_encoder(size, fixtures / f"PAT-{size}_random_seed0.h5")(
            reference["inputs"], training=False
        )
        diffs[f"PAT-{size} encoder_output"] = float(np.abs(embeddings - reference["encoder_output"]).max())
        head_mean = scores[-1][0].numpy().mean(axis=0)
        last = reference["last_layer_attention_head_mean_input0"]
        diffs[f"PAT-{size} last attention"] = float(np.abs(head_mean - last).max())
    reference = np.load(fixtures / "PAT-M_finetuned_random_seed0_reference.npz")
    classifier = load_classifier("M", fixtures / "PAT-M_finetuned_random_seed0.h5")
    probability = classifier(reference["inputs"], training=False).numpy()
    diffs["PAT-M fine-tuned probability"] = float(np.abs(probability - reference["probability"]).max())
    return diffs


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Time one size on the given batches (runs in its own process, threads set before TF starts)."""
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    model = embeddings_only(load_encoder(args.size, args.weights))
    graph = tf.function(lambda weeks: model(weeks, training=False))
    windows = np.load(args.windows)
    np.save(args.out, graph(windows).numpy())
    # The first call per batch shape traces the graph; `.numpy()` waits for the result.
    rows = time_batches(lambda weeks: graph(weeks).numpy(), windows[0], args.batches, args.seconds)
    return {
        "size": args.size,
        "backend": "keras",
        "threads": args.threads,
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "call": "tf.function(model(x, training=False))",
        "device": "gpu" if tf.config.list_logical_devices("GPU") else "cpu",
        # ru_maxrss is in KiB on Linux
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="compare with the reference fixtures' outputs")
    check_parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    bench_parser = commands.add_parser("bench", help="time one size (bench_model.py's Keras child)")
    bench_parser.add_argument("--size", required=True, choices=list(PAT_SIZES))
    bench_parser.add_argument("--weights", type=Path, required=True, help="encoder H5 (save_weights layout)")
    bench_parser.add_argument("--windows", type=Path, required=True, help="(n, 10080) float32 .npy")
    bench_parser.add_argument("--out", type=Path, required=True, help="embeddings of --windows (.npy)")
    bench_parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    bench_parser.add_argument("--seconds", type=float, default=2.0)
    bench_parser.add_argument("--threads", type=int, required=True, help="TF intra- and inter-op threads")
    args = parser.parse_args(argv)
    if args.command == "check":
        for name, diff in check(args.fixtures).items():
            print(f"{name:<32} max |Δ| {diff:.2e}")
    else:
        print(json.dumps(bench(args)))


if __name__ == "__main__":
    main()
