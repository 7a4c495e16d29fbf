"""Render the Kubernetes overlays in `deploy/k8s/` and validate every object against the Kubernetes
JSON schemas (`kubernetes-validate`, strict: unknown fields are errors), offline. Part of `make lint`.

    python scripts/k8s_validate.py [--kubernetes-version 1.30.0]

The renderer covers what the kustomizations here use — `resources` (files and directories), `labels`
(metadata only), `images` and JSON 6902 `patches` with a kind/name target — so no kustomize binary is
needed; tests/test_k8s.py compares its output with `kubectl kustomize` where kubectl exists.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# Oldest Kubernetes minor still in upstream support when these manifests were written; validating
# against it keeps them usable on older managed clusters.
KUBERNETES_VERSION = "1.30.0"
Document = dict[str, Any]


def load_documents(path: Path) -> list[Document]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _walk(document: Any, parts: list[str]) -> Any:
    for part in parts:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def apply_json_patch(document: Document, operations: list[dict[str, Any]]) -> Document:
    """RFC 6902 add / replace / remove / test on a copy of `document`."""
    out = copy.deepcopy(document)
    for op in operations:
        *parent_parts, last = _pointer(op["path"])
        parent = _walk(out, parent_parts)
        kind = op["op"]
        if kind == "test":
            actual = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if actual != op["value"]:
                raise ValueError(f"patch test failed at {op['path']}: {actual!r} != {op['value']!r}")
        elif kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "replace":
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op["value"])
            elif last in parent:
                parent[last] = copy.deepcopy(op["value"])
            else:
                raise ValueError(f"replace of a missing path {op['path']}")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ValueError(f"unsupported JSON patch op {kind!r}")
    return out


def _matches(document: Document, target: dict[str, str]) -> bool:
    return all(
        (
            target.get("kind") in (None, document.get("kind")),
            target.get("name") in (None, document.get("metadata", {}).get("name")),
        )
    )


def _containers(document: Document) -> list[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def render(directory: Path) -> list[Document]:
    """The objects `kustomize build directory` produces (for the features used here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "labels", "images", "patches"}
    if unknown:
        raise ValueError(f"{directory}: kustomization fields not rendered here: {sorted(unknown)}")
    documents: list[Document] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        documents.extend(render(path) if path.is_dir() else load_documents(path))
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load(patch["patch"])
        hits = [i for i, doc in enumerate(documents) if _matches(doc, patch["target"])]
        if not hits:
            raise ValueError(f"{directory}: patch target {patch['target']} matches nothing")
        for i in hits:
            documents[i] = apply_json_patch(documents[i], operations)
    for image in kustomization.get("images", []):
        for document in documents:
            for container in _containers(document):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for label in kustomization.get("labels", []):
        for document in documents:
            document.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    return documents


def validate(documents: list[Document], version: str = KUBERNETES_VERSION) -> list[str]:
    """One message per object that does not validate (strict schema)."""
    errors = []
    for document in documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {exc.message} at {'/'.join(str(p) for p in exc.path)}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: no schema ({exc})")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    failures = 0
    targets = {f"overlays/{name}": render(K8S / "overlays" / name) for name in OVERLAYS}
    targets["base/secret.example.yaml"] = load_documents(K8S / "base" / "secret.example.yaml")
    for label, documents in targets.items():
        errors = validate(documents, args.kubernetes_version)
        failures += len(errors)
        for error in errors:
            print(f"deploy/k8s/{label}: {error}", file=sys.stderr)
        if not errors:
            print(
                f"deploy/k8s/{label}: {len(documents)} objects valid (Kubernetes {args.kubernetes_version})"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
