#!/usr/bin/env bash
# The container check (`make test-container`, run by .ci/run after `make test`):
#   podman + buildah + runc + debootstrap (apt-get, idempotent)
#   → local base image (debootstrap minbase bookworm → podman import → Python 3.11, uv; reused)
#   → `bentoml build` (CI bentofile: local base image, torch from the locally resolved wheel)
#   → `bentoml containerize --backend podman` (builds on the host network, trusting the host's CA bundle)
#   → `podman run --init --network host --read-only` as the image's non-root user
#   → /readyz 200 → one /v1/analyze equal to the in-process result
#   → the same as two containers, API → model service by URL (the Kubernetes layout)
#   → image env and layers scanned for key material → containers removed.
# Skips (exit 0, with a message) only where podman cannot be installed. Figures go to
# $PAT_CONTAINER_WORK/facts.json (see docs/deployment.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
BENTOML=$(dirname "$PY")/bentoml
WORK=${PAT_CONTAINER_WORK:-/var/tmp/pat-container}
ROOTFS_IMAGE=localhost/pat-debian-minbase:bookworm
BASE_IMAGE=localhost/pat-base:bookworm-py3.11
IMAGE=localhost/pat_service:ci
CONTAINER=pat-ci-$$
MODEL_CONTAINER=pat-ci-model-$$
API_CONTAINER=pat-ci-api-$$
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
export CONTAINERS_CONF=$ROOT/deploy/container/containers.conf
export BENTOML_DO_NOT_TRACK=true
started=$(date +%s)
mkdir -p "$WORK"

log() { printf '[container-check %4ss] %s\n' "$(($(date +%s) - started))" "$*"; }

install_tools() {
    local missing=()
    for tool in podman buildah runc debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap >"$WORK/apt.log" 2>&1 \
        || { apt-get update -q >>"$WORK/apt.log" 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap \
                >>"$WORK/apt.log" 2>&1; }
}

if ! install_tools; then
    echo "SKIP container check: podman cannot be installed here (needs root and apt-get; see $WORK/apt.log)."
    exit 0
fi

# The Debian mirror this machine's apt uses (deb822 .sources or one-line sources.list).
debian_mirror() {
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -E '/debian/?$' | head -n1)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -E '/debian/?$' | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base_image() {
    if podman image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE exists: reused"
        return
    fi
    if ! podman image exists "$ROOTFS_IMAGE"; then
        local mirror rootfs="$WORK/rootfs"
        mirror=$(debian_mirror)
        log "debootstrap --variant=minbase bookworm from $mirror"
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1
        # debootstrap leaves its downloaded .debs and package lists behind: not part of an image.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$ROOTFS_IMAGE" >/dev/null 2>&1
        rm -rf "$rootfs"
    fi
    log "building $BASE_IMAGE"
    podman build --network host --volume "$HOST_CA:/run/host-ca.crt:ro" \
        --build-arg ROOTFS_IMAGE="$ROOTFS_IMAGE" -t "$BASE_IMAGE" \
        -f deploy/container/Containerfile.base deploy/container >"$WORK/base-build.log" 2>&1
}

cleanup() {
    # One at a time: `podman rm -f a b` removes nothing when one of them is already gone.
    for name in "$CONTAINER" "$MODEL_CONTAINER" "$API_CONTAINER"; do
        podman rm -f --ignore "$name" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

build_base_image

# A model store of its own holding the demo PAT, so the Bento (and the image) carry exactly that model.
export BENTOML_HOME=$WORK/bentoml-home
rm -rf "$BENTOML_HOME"
PAT_AUTH=disabled "$PY" -c "from pat_runner.model.store import ensure_demo_model; ensure_demo_model()"

# torch exactly as pip resolves it on this machine (here: the local CPU wheel that pip's find-links
# names; elsewhere set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build).
# BentoML copies only wheels inside the build context, hence build/ (git-ignored).
wheels=build/container-wheels
rm -rf "$wheels" && mkdir -p "$wheels"
"$PY" -m pip download --quiet --no-deps torch==2.13.0 -d "$wheels" 2>&1 | grep -v 'is ignored' || true
wheel=$(ls "$wheels"/torch-2.13.0*.whl)
"$PY" scripts/container_bentofile.py --base-image "$BASE_IMAGE" --wheel "$wheel" \
    --output "$WORK/bentofile.ci.yaml"

log "bentoml build"
bento=$(PAT_AUTH=disabled "$BENTOML" build -f "$WORK/bentofile.ci.yaml" --output tag . 2>"$WORK/build.log" \
    | sed -n 's/^__tag__://p' | tail -n1)
[ -n "$bento" ] || { cat "$WORK/build.log"; exit 1; }
log "bentoml containerize $bento --backend podman"
build_start=$(date +%s)
"$BENTOML" containerize "$bento" --backend podman -t "$IMAGE" \
    --opt network=host --opt "volume=$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro" \
    >"$WORK/containerize.log" 2>&1 || { tail -n 60 "$WORK/containerize.log"; exit 1; }
build_seconds=$(($(date +%s) - build_start))

# Read-only root filesystem: BentoML's home (Prometheus multiprocess files, store indexes) goes to the
# /tmp tmpfs; the Bento and its models stay read-only under /home/bentoml/bento.
free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
now() { "$PY" -c "import time; print(time.time())"; }
# PAT_BACKEND=torch: the fp32 reference path, so the served result can equal the in-process one exactly
# (the image's default, `auto`, may pick a faster backend within the accuracy gate).
RUN_OPTS=(--init --network host --read-only --tmpfs /tmp -e BENTOML_HOME=/tmp/bentoml -e PAT_HOST=127.0.0.1
    -e PAT_AUTH=disabled -e PAT_PROTECT_DOCS=false -e PAT_BACKEND=torch)
port=$(free_port)
log "podman run --init --network host --read-only on 127.0.0.1:$port"
run_start=$(now)
podman run -d "${RUN_OPTS[@]}" --name "$CONTAINER" -e BENTOML_PORT="$port" "$IMAGE" >/dev/null

user=$(podman exec "$CONTAINER" id -un)
[ "$(podman exec "$CONTAINER" id -u)" != 0 ] || { echo "the image runs as root"; exit 1; }
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
"$PY" scripts/container_smoke.py --url "http://127.0.0.1:$port" --started "$run_start" --container "$CONTAINER" \
    --facts "$WORK/facts.json" --extra image="$IMAGE" --extra user="$user" --extra size_bytes="$size" \
    --extra containerize_seconds="$build_seconds" \
    || { podman logs "$CONTAINER" 2>&1 | tail -n 60; exit 1; }

podman rm -f "$CONTAINER" >/dev/null 2>&1

# The Kubernetes layout (deploy/k8s): the same image as two containers, the API service reaching the
# model service by URL (BENTOML_SERVE_DEPENDS), each started with `start-http-server --service-name` and
# the manifests' keep-alive.
keep_alive=(--timeout-keep-alive "$("$PY" -c 'from pat_runner.serving.http import KEEP_ALIVE_S; print(KEEP_ALIVE_S)')")
model_port=$(free_port)
api_port=$(free_port)
log "split layout: model service on :$model_port, API service on :$api_port"
run_start=$(now)
podman run -d "${RUN_OPTS[@]}" --name "$MODEL_CONTAINER" "$IMAGE" \
    start-http-server --service-name pat_model --port "$model_port" "${keep_alive[@]}" >/dev/null
podman run -d "${RUN_OPTS[@]}" --name "$API_CONTAINER" -e BENTOML_SERVE_DEPENDS="pat_model=http://127.0.0.1:$model_port" \
    "$IMAGE" start-http-server --service-name pat_service --port "$api_port" "${keep_alive[@]}" >/dev/null
"$PY" scripts/container_smoke.py --url "http://127.0.0.1:$api_port" --started "$run_start" \
    --container "$API_CONTAINER" --facts "$WORK/facts-split.json" \
    || { podman logs "$API_CONTAINER" 2>&1 | tail -n 40; podman logs "$MODEL_CONTAINER" 2>&1 | tail -n 40; exit 1; }
podman logs "$MODEL_CONTAINER" 2>&1 | grep -Eq 'POST /infer|method=POST,path=/infer' \
    || { echo "the API container did not call the model container"; exit 1; }

log "scanning $IMAGE for key material"
podman save --format docker-archive -o "$WORK/image.tar" "$IMAGE" >/dev/null 2>&1
"$PY" scripts/image_scan.py "$WORK/image.tar"
rm -f "$WORK/image.tar"

cleanup
for name in "$CONTAINER" "$MODEL_CONTAINER" "$API_CONTAINER"; do
    if podman container exists "$name"; then echo "container $name was not removed"; exit 1; fi
done
log "container check passed ($(($(date +%s) - started)) s in all); facts in $WORK/facts*.json"
cat "$WORK/facts.json" "$WORK/facts-split.json"
