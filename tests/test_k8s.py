"""The Kubernetes manifests: both overlays render and validate against the Kubernetes schemas, the
renderer agrees with `kubectl kustomize`, and the layout keeps its promises (two independently scaled
Deployments wired by URL, probes, PDBs, Secrets only by reference, GPU only in the GPU overlay)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from pat_runner.serving.http import KEEP_ALIVE_S
from scripts.k8s_validate import K8S, OVERLAYS, apply_json_patch, render, validate


def by_kind(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container(deployment)["env"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates(overlay: str) -> None:
    assert validate(render(K8S / "overlays" / overlay)) == []


def test_validation_rejects_unknown_fields() -> None:
    (deployment,) = [d for d in render(K8S / "overlays" / "cpu") if d["kind"] == "Deployment"][:1]
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    (error,) = validate([deployment])
    assert "resource" in error


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    expected = by_kind([doc for doc in yaml.safe_load_all(built) if doc])
    assert by_kind(render(K8S / "overlays" / overlay)) == expected


def test_api_and_model_are_separate_deployments_wired_by_url() -> None:
    objects = by_kind(render(K8S / "overlays" / "cpu"))
    api, model = objects["Deployment", "pat-api"], objects["Deployment", "pat-model"]
    keep_alive = ["--timeout-keep-alive", str(KEEP_ALIVE_S)]
    assert container(api)["args"] == ["start-http-server", "--service-name", "pat_service", *keep_alive]
    assert container(model)["args"] == ["start-http-server", "--service-name", "pat_model", *keep_alive]
    model_service = objects["Service", "pat-model"]
    port = model_service["spec"]["ports"][0]["port"]
    assert env(api)["BENTOML_SERVE_DEPENDS"] == f"pat_model=http://pat-model:{port}"
    for deployment in (api, model):
        name = deployment["metadata"]["name"]
        probes = container(deployment)
        assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert probes["resources"]["requests"] and probes["resources"]["limits"]
        assert probes["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        hpa = objects["HorizontalPodAutoscaler", name]
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert objects["PodDisruptionBudget", name]["spec"]["selector"]["matchLabels"] == selector
        assert objects["NetworkPolicy", name]["spec"]["podSelector"]["matchLabels"] == selector
    metrics = {
        m["pods"]["metric"]["name"]
        for m in objects["HorizontalPodAutoscaler", "pat-model"]["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert metrics == {"pat_model_inflight"}


def test_secrets_only_by_reference() -> None:
    for overlay in OVERLAYS:
        documents = render(K8S / "overlays" / overlay)
        assert not [d for d in documents if d["kind"] == "Secret"]
        for deployment in (d for d in documents if d["kind"] == "Deployment"):
            for name, value in env(deployment).items():
                if name in {"PAT_REDIS_URL", "PAT_CACHE_KEYS", "PAT_CACHE_HMAC_KEY", "PAT_REDIS_PASSWORD"}:
                    assert set(value) == {"secretKeyRef"}, name


def test_gpu_only_in_the_gpu_overlay() -> None:
    cpu = by_kind(render(K8S / "overlays" / "cpu"))
    gpu = by_kind(render(K8S / "overlays" / "gpu"))
    assert "nvidia.com/gpu" not in yaml.safe_dump(list(cpu.values()))
    model = gpu["Deployment", "pat-model"]
    assert container(model)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(model)["PAT_DEVICE"] == "cuda"
    spec = model["spec"]["template"]["spec"]
    assert spec["nodeSelector"] and spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nvidia.com/gpu" not in yaml.safe_dump(gpu["Deployment", "pat-api"])


def test_json_patch_test_op_guards_indices() -> None:
    document = {"env": [{"name": "A", "value": "1"}]}
    with pytest.raises(ValueError, match="patch test failed"):
        apply_json_patch(document, [{"op": "test", "path": "/env/0/name", "value": "B"}])
    patched = apply_json_patch(document, [{"op": "add", "path": "/env/-", "value": {"name": "C"}}])
    assert [e["name"] for e in patched["env"]] == ["A", "C"]
    assert len(document["env"]) == 1
