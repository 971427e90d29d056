#!/usr/bin/env bash
# `bentoml containerize` with everything it needs made here: a container engine, a local base
# image, then the image of a built Bento. Idempotent: each step is skipped when already done.
#
#   bash scripts/container.sh [build] [BENTO_TAG]  # engine, base, containerize (recommender:latest)
#   bash scripts/container.sh engine               # a Docker engine that answers `docker info`
#   bash scripts/container.sh base [IMAGE]         # the base image (default: bentofile.yaml's)
#   bash scripts/container.sh stop                 # stop the dockerd this script started
#
# With no engine answering, it installs Debian's docker.io (root, apt) and starts dockerd on the
# host network only: no docker0 bridge, no NAT, no iptables rules. Run the image with
# `docker run --network host`. No container registry is needed: the base image is Debian
# bookworm (Python 3.11) made with debootstrap and `docker import`, under the name the Bento's
# `docker.base_image` gives. Its state (dockerd log and pid, scratch rootfs) lives under
# RECSYS_CONTAINER_STATE; images stay in dockerd's own store (/var/lib/docker).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
state=${RECSYS_CONTAINER_STATE:-/tmp/recsys-docker}
bentoml=${BENTOML:-$repo/.venv/bin/bentoml}
python=${PYTHON:-$repo/.venv/bin/python}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian's docker 20.10 client has BuildKit built in; a static docker without buildx does not.
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export BENTOML_DO_NOT_TRACK=true DO_NOT_TRACK=true
# The base image: what BentoML's Dockerfile needs (bash, useradd, pip to install uv, Python
# 3.11 for the venv) and curl for the health check. No compiler: every pinned package is a wheel.
base_packages=python3,python3-pip,python3-venv,ca-certificates,curl,passwd
engine_wait_s=30
stop_wait_s=30

say() { echo "==> $*"; }
die() { echo "container.sh: $*" >&2; exit 1; }

engine_answers() { docker info >/dev/null 2>&1; }

apt_install() {  # packages whose commands are missing
  [ "$(id -u)" -eq 0 ] || die "installing $* needs root (apt-get)"
  say "installing $* (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

start_engine() {
  if engine_answers; then
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "no Docker engine answers, and starting dockerd needs root"
  if ! command -v dockerd >/dev/null || [ ! -x /usr/bin/docker ]; then apt_install docker.io; fi
  mkdir -p "$state"
  say "starting dockerd (log: $state/dockerd.log)"
  # Its own session, so that it outlives this script and a caller's process group.
  setsid dockerd --storage-driver overlay2 --bridge=none --iptables=false --ip-masq=false \
    --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 </dev/null &
  local waited=0
  until engine_answers; do
    if [ "$waited" -ge "$engine_wait_s" ]; then
      tail -n 20 "$state/dockerd.log" >&2
      die "dockerd did not answer within ${engine_wait_s} s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  say "dockerd answers ($(docker version --format '{{.Server.Version}}'))"
}

stop_engine() {
  local pidfile=$state/dockerd.pid pid waited=0
  if [ ! -s "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "no dockerd started by this script is running"
    return
  fi
  pid=$(cat "$pidfile")
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    [ "$waited" -lt "$stop_wait_s" ] || die "dockerd (pid $pid) still runs after ${stop_wait_s} s"
    sleep 1
    waited=$((waited + 1))
  done
}

base_image_of() {  # the docker.base_image a bentofile names
  "$python" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["docker"]["base_image"])' <"$1"
}

bento_of() {  # "name:version base_image" of a built Bento ("recommender:latest": the newest)
  "$python" - "$1" <<'EOF'
import sys

import bentoml
import yaml

bento = bentoml.get(sys.argv[1])
info = yaml.safe_load(open(bento.path_of("bento.yaml")))
docker = info.get("docker") or info.get("image") or {}  # the Bento v1 and v2 layouts
print(bento.tag, docker.get("base_image") or "")
EOF
}

build_base() {
  local image=$1 rootfs
  [ -n "$image" ] || die "the bentofile names no docker.base_image to build"
  if docker image inspect "$image" >/dev/null 2>&1; then
    say "base image $image is there"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "building the base image needs root (debootstrap)"
  command -v debootstrap >/dev/null || apt_install debootstrap
  mkdir -p "$state"
  rootfs=$(mktemp -d "$state/rootfs.XXXXXX")
  # --one-file-system: never follow a mount debootstrap may have left inside the rootfs.
  trap 'rm -rf --one-file-system "$rootfs"' EXIT
  say "debootstrap bookworm into $rootfs ($base_packages)"
  if ! debootstrap --variant=minbase --include="$base_packages" bookworm "$rootfs" "$mirror" \
      >"$state/debootstrap.log" 2>&1; then
    tail -n 20 "$state/debootstrap.log" >&2
    die "debootstrap failed (log: $state/debootstrap.log)"
  fi
  # pip and uv inside the build reach the package index only with this machine's CAs.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >/dev/null
  # BentoML's Dockerfile pip-installs uv into the system Python: allow it (PEP 668).
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb
  say "importing it as $image"
  local bundle=/etc/ssl/certs/ca-certificates.crt
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV SSL_CERT_FILE=$bundle PIP_CERT=$bundle REQUESTS_CA_BUNDLE=$bundle" \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'CMD ["python3"]' - "$image" >/dev/null
  rm -rf --one-file-system "$rootfs"
  trap - EXIT
  say "base image $image: $(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=si)B"
}

containerize() {
  local bento image base size started
  bento=$(bento_of "$1") || die "no Bento $1 in ${BENTOML_HOME:-~/bentoml} (bentoml build first)"
  read -r image base <<<"$bento"  # the image is tagged as the Bento: its version, not "latest"
  start_engine
  build_base "$base"
  say "bentoml containerize $image"
  started=$SECONDS
  # BentoML 1.4.40 wants the Dockerfile template in its temporary build context to lie under
  # the working directory (bentoml/BentoML#5566): run it from the root of its own TMPDIR.
  mkdir -p "$state/containerize"
  (cd "$state/containerize" && TMPDIR=$PWD \
    "$bentoml" containerize "$image" --opt network=host --opt progress=plain)
  size=$(docker image inspect -f '{{.Size}}' "$image")
  say "image $image built in $((SECONDS - started)) s: $(numfmt --to=si "$size")B ($size bytes)"
}

action=${1:-build}
case "$action" in
  engine) start_engine ;;
  base) image=${2:-$(base_image_of bentofile.yaml)}; start_engine; build_base "$image" ;;
  build) containerize "${2:-recommender:latest}" ;;
  stop) stop_engine ;;
  *:*) containerize "$action" ;;  # a Bento tag alone
  *) die "usage: $0 [build [BENTO_TAG] | engine | base [IMAGE] | stop]" ;;
esac
