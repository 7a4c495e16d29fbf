"""Write the bentofile the container check builds: `bentofile.yaml` with a local base image and torch
from a wheel file instead of the PyTorch CPU index (which this machine cannot reach).

    python scripts/container_bentofile.py --base-image localhost/pat-base:bookworm-py3.11 \
        --wheel /path/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl --output bentofile.ci.yaml

The committed bentofile.yaml stays as real users build it (python:3.11 base, CPU index); only this
derived copy changes. The wheel travels in the Bento (`python.wheels`, i.e. env/python/wheels) and
`find_links` pointing there lets `requirements.txt`'s `torch==2.13.0` resolve to it (uv prefers
find-links candidates), so nothing pulls PyPI's CUDA build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENTO_WHEELS = "/home/bentoml/bento/env/python/wheels"


def ci_bentofile(source: dict[str, Any], *, base_image: str, wheel: str) -> dict[str, Any]:
    """A copy of `source` building FROM `base_image` with torch installed from `wheel`."""
    config = {
        **source,
        "python": dict(source.get("python") or {}),
        "docker": dict(source.get("docker") or {}),
    }
    python = config["python"]
    python.pop("extra_index_url", None)
    # BentoML takes only paths relative to the build context (the repository root).
    python["wheels"] = [wheel]
    # Absolute: install.sh runs the requirements step inside env/python but the wheels step in the
    # Bento root; this is where BentoML's Dockerfile puts the Bento ($BENTO_PATH).
    python["find_links"] = [BENTO_WHEELS]
    docker = config["docker"]
    docker["base_image"] = base_image
    # With a base image BentoML's base template installs nothing through apt; the distro key is unused.
    docker.pop("distro", None)
    docker.pop("system_packages", None)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ROOT / "bentofile.yaml"))
    parser.add_argument("--base-image", required=True)
    parser.add_argument(
        "--wheel", required=True, help="the torch==2.13.0 wheel, relative to the repository root"
    )
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    source = yaml.safe_load(Path(args.source).read_text())
    config = ci_bentofile(source, base_image=args.base_image, wheel=args.wheel)
    Path(args.output).write_text(yaml.safe_dump(config, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
