#!/usr/bin/env bash
# Builds the three images (Dockerfile.operator, .queue, .training) on a machine
# with no container registry: a Docker daemon of its own, a Debian bookworm
# base made by debootstrap, and a wheelhouse on loopback that pip installs the
# locks from, so no wheel is downloaded twice.
#
#   hack/images.sh build [operator|queue|training ...]  build (default: all three)
#   hack/images.sh base                  only the local base image
#   hack/images.sh sizes                 each image's size
#   hack/images.sh load-containerd SOCKET [operator|queue|training ...]
#                                        import into containerd (namespace k8s.io)
#   hack/images.sh env                   start the daemon; print DOCKER_HOST for it
#   hack/images.sh prune                 drop the cached layers no image uses
#   hack/images.sh down                  stop the daemon and the wheel server
#
# Images are tagged azaion.local/<name>:${AZAION_IMAGE_TAG:-dev}. Each carries
# a label azaion.local.inputs, a hash of everything it is built from (base
# image, Dockerfile, lock, pyproject.toml, README.md, operator/, workloads/);
# an image whose label matches is not built again.
#
# The Dockerfiles are built unchanged but for PYTHON_IMAGE, the local base
# (azaion.local/python-base:3.11-bookworm: Debian's python3 3.11). That base,
# and it alone, carries this machine's CA bundle for pip and points pip at the
# wheelhouse (PIP_NO_INDEX, PIP_FIND_LINKS); builds use --network host.
#
# Settings (environment):
#   AZAION_IMAGES_DIR    daemon data, rootfs cache, logs (~/.cache/azaion/images)
#   AZAION_WHEELS_DIR    the wheelhouse (~/.cache/azaion/wheels)
#   AZAION_WHEELS_PORT   its loopback port (8765)
#   AZAION_WHEELHOUSE    0: no wheelhouse, pip in the builds uses PyPI
#   AZAION_IMAGE_TAG     the tag (dev)
#   AZAION_IMAGE_REVISION  the image's revision label (build argument REVISION);
#                        another revision is another image digest, same layers
#   AZAION_DEBIAN_MIRROR, AZAION_DEBIAN_SECURITY_MIRROR  apt sources of the base
#   AZAION_HOST_CA       the CA bundle pip trusts in the base
#                        (/etc/ssl/certs/ca-certificates.crt)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

dir="${AZAION_IMAGES_DIR:-$HOME/.cache/azaion/images}"
wheels="${AZAION_WHEELS_DIR:-$HOME/.cache/azaion/wheels}"
port="${AZAION_WHEELS_PORT:-8765}"
wheelhouse="${AZAION_WHEELHOUSE:-1}"
tag="${AZAION_IMAGE_TAG:-dev}"
revision="${AZAION_IMAGE_REVISION:-unknown}"
mirror="${AZAION_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${AZAION_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
host_ca="${AZAION_HOST_CA:-/etc/ssl/certs/ca-certificates.crt}"
suite=bookworm
rootfs_image="azaion.local/debian:$suite-minbase"
base_image="azaion.local/python-base:3.11-$suite"
all_images=(operator queue training)

sock="$dir/docker.sock"
export DOCKER_HOST="unix://$sock"
# Debian's docker.io has no buildx: the daemon's classic builder.
export DOCKER_BUILDKIT=0

log() { echo "images: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# A pid file whose process is alive.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Serialise the commands that change state (two builds at once would race).
take_lock() {
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9
}

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root"; }

# A CPython 3.11 for pip download: the wheels must fit the images' Python.
host_python() {
  local candidate
  for candidate in "$repo/.venv/bin/python" python3.11 python3; do
    if command -v "$candidate" >/dev/null \
      && "$candidate" -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")'; then
      echo "$candidate"
      return
    fi
  done
  die "no CPython 3.11 on x86_64 found for the wheelhouse (or set AZAION_WHEELHOUSE=0)"
}

docker_up() {
  if docker version >/dev/null 2>&1; then return; fi
  need_root "starting dockerd"
  command -v dockerd >/dev/null || die "dockerd missing (apt-get install docker.io)"
  mkdir -p "$dir/data" "$dir/exec" "$dir/logs"
  log "starting dockerd ($sock)"
  # No bridge, no iptables rules, no forwarding change: builds use the host
  # network, and the host's other networking stays as it is.
  setsid dockerd \
    --data-root "$dir/data" --exec-root "$dir/exec" \
    --host "unix://$sock" --pidfile "$dir/dockerd.pid" \
    --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    >"$dir/logs/dockerd.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  for _ in $(seq 1 120); do
    if docker version >/dev/null 2>&1; then return; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  tail -n 20 "$dir/logs/dockerd.log" >&2 || true
  die "dockerd did not come up (log: $dir/logs/dockerd.log)"
}

stop_pid() {
  local name="$1" pidfile="$2" pid
  if ! alive "$pidfile"; then
    rm -f "$pidfile"
    return
  fi
  pid="$(cat "$pidfile")"
  log "stopping $name (pid $pid)"
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop in 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

wheels_url() { echo "http://127.0.0.1:$port/"; }

serve_wheels() {
  if alive "$dir/wheels.pid" && curl -fsS -o /dev/null "$(wheels_url)"; then return; fi
  if curl -fsS -o /dev/null "$(wheels_url)" 2>/dev/null; then
    die "port $port already serves something else (set AZAION_WHEELS_PORT)"
  fi
  mkdir -p "$wheels" "$dir/logs"
  local py
  py="$(host_python)"
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c 'echo $$ > "$1"; exec "$2" -m http.server --bind 127.0.0.1 --directory "$3" "$4"' \
    _ "$dir/wheels.pid" "$py" "$wheels" "$port" >"$dir/logs/wheels.log" 2>&1 </dev/null 9>&- &
  for _ in $(seq 1 40); do
    if curl -fsS -o /dev/null "$(wheels_url)" 2>/dev/null; then return; fi
    sleep 0.25
  done
  cat "$dir/logs/wheels.log" >&2 || true
  die "the wheel server did not come up on 127.0.0.1:$port"
}

# Every wheel of a lock into the wheelhouse, hashes checked; pip's own cache
# serves what it already holds. Done once per lock content.
fill_wheels() {
  local name lock stamp py
  for name in "$@"; do
    lock="requirements/$name.txt"
    stamp="$wheels/.complete-$name-$(sha256sum "$lock" | cut -c1-16)"
    [ -f "$stamp" ] && continue
    py="${py:-$(host_python)}"
    mkdir -p "$wheels"
    log "wheelhouse: $lock"
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
      --only-binary=:all: -r "$lock" -d "$wheels"
    rm -f "$wheels/.complete-$name-"*
    touch "$stamp"
  done
}

image_label() {
  docker image inspect --format '{{ index .Config.Labels "azaion.local.inputs" }}' "$1" 2>/dev/null || true
}

image_id() { docker image inspect --format '{{ .Id }}' "$1" 2>/dev/null || true; }

# The rootfs of Debian's minimal variant, kept as a tar per suite.
rootfs() {
  local tar="$dir/rootfs/$suite-minbase.tar" tmp start
  if [ ! -s "$tar" ]; then
    need_root "debootstrap"
    command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
    mkdir -p "$dir/rootfs"
    tmp="$(mktemp -d "$dir/rootfs/$suite.XXXXXX")"
    log "debootstrap --variant=minbase $suite ($mirror)"
    start=$SECONDS
    if ! debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$dir/logs/debootstrap.log" 2>&1; then
      tail -n 20 "$dir/logs/debootstrap.log" >&2
      rm -rf "$tmp"
      die "debootstrap failed (log: $dir/logs/debootstrap.log)"
    fi
    tar --numeric-owner -C "$tmp" -cf "$tar.part" .
    mv "$tar.part" "$tar"
    rm -rf "$tmp"
    log "rootfs $suite: $(du -h "$tar" | cut -f1) in $((SECONDS - start)) s"
    docker image rm "$rootfs_image" >/dev/null 2>&1 || true
  fi
  if [ -z "$(image_id "$rootfs_image")" ]; then
    docker import --change 'CMD ["/bin/bash"]' "$tar" "$rootfs_image" >/dev/null
  fi
}

base() {
  local ctx="$dir/base" start key
  rootfs
  mkdir -p "$ctx"
  # The CA bundle goes into this local base only, never into a Dockerfile.
  if [ -s "$host_ca" ]; then
    cp "$host_ca" "$ctx/host-ca-certificates.crt"
  else
    : >"$ctx/host-ca-certificates.crt"
  fi
  {
    cat <<EOF
FROM $rootfs_image
ARG DEBIAN_FRONTEND=noninteractive
RUN printf '%s\\n' 'deb $mirror $suite main' 'deb $mirror $suite-updates main' \\
      'deb $security_mirror $suite-security main' >/etc/apt/sources.list \\
 && apt-get update \\
 && apt-get upgrade -y \\
 && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY host-ca-certificates.crt /usr/local/share/azaion/host-ca-certificates.crt
EOF
    if [ -s "$ctx/host-ca-certificates.crt" ]; then
      echo "ENV PIP_CERT=/usr/local/share/azaion/host-ca-certificates.crt"
    fi
    if [ "$wheelhouse" = 1 ]; then
      echo "ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=$(wheels_url)"
    fi
    echo "ENV LANG=C.UTF-8"
    echo 'CMD ["python"]'
  } >"$ctx/Dockerfile"
  key="$({
    image_id "$rootfs_image"
    cat "$ctx/Dockerfile" "$ctx/host-ca-certificates.crt"
  } | sha256sum | cut -c1-32)"
  [ "$(image_label "$base_image")" = "$key" ] && return
  log "building $base_image"
  start=$SECONDS
  if ! docker build --network host --label "azaion.local.inputs=$key" -t "$base_image" "$ctx" \
    >"$dir/logs/build-base.log" 2>&1; then
    tail -n 30 "$dir/logs/build-base.log" >&2
    die "the base image failed (log: $dir/logs/build-base.log)"
  fi
  echo "python-base: built in $((SECONDS - start)) s"
}

# The source trees each image copies (as its Dockerfile's COPY lines do): a
# change to one part rebuilds only the images that carry it.
image_sources() {
  case "$1" in
    operator) find contract operator -type f ;;
    queue) find contract workloads/azaion_workloads/queue -type f; find workloads/azaion_workloads -maxdepth 1 -name '*.py' ;;
    training) find contract workloads/azaion_workloads/training -type f; find workloads/azaion_workloads -maxdepth 1 -name '*.py' ;;
  esac | grep -v -e '/__pycache__/' -e '\.pyc$' -e '\.egg-info/'
}

# A hash of everything an image is built from.
inputs() {
  local name="$1"
  {
    image_id "$base_image"
    [ "$revision" = unknown ] || echo "revision=$revision"
    sha256sum "Dockerfile.$name" "requirements/$name.txt" .dockerignore pyproject.toml README.md
    image_sources "$name" | sort | tr '\n' '\0' | xargs -0 sha256sum
  } | sha256sum | cut -c1-32
}

check_names() {
  local name
  for name in "$@"; do
    case "$name" in
      operator | queue | training) ;;
      *) die "unknown image '$name' (operator, queue, training)" ;;
    esac
  done
}

build() {
  local names=("$@") name key ref old start
  [ ${#names[@]} -gt 0 ] || names=("${all_images[@]}")
  check_names "${names[@]}"
  docker_up
  if [ "$wheelhouse" = 1 ]; then
    fill_wheels "${names[@]}"
    serve_wheels
  fi
  base
  mkdir -p "$dir/logs"
  for name in "${names[@]}"; do
    ref="azaion.local/$name:$tag"
    key="$(inputs "$name")"
    if [ "$(image_label "$ref")" = "$key" ]; then
      echo "$name: up to date ($ref)"
      continue
    fi
    old="$(image_id "$ref")"
    log "building $ref (log: $dir/logs/build-$name.log)"
    start=$SECONDS
    if ! docker build --network host -f "Dockerfile.$name" \
      --build-arg "PYTHON_IMAGE=$base_image" --build-arg "REVISION=$revision" \
      --label "azaion.local.inputs=$key" -t "$ref" . >"$dir/logs/build-$name.log" 2>&1; then
      tail -n 40 "$dir/logs/build-$name.log" >&2
      die "$name failed (log: $dir/logs/build-$name.log)"
    fi
    echo "$name: built in $((SECONDS - start)) s ($ref)"
    # The image this one replaces, unless something else still uses it.
    if [ -n "$old" ] && [ "$old" != "$(image_id "$ref")" ]; then
      docker image rm "$old" >/dev/null 2>&1 || true
    fi
  done
  # What failed builds left: untagged images no image builds on (the cache of
  # the tagged ones stays).
  docker image prune -f >/dev/null
}

sizes() {
  docker_up
  local ref size name refs=("$base_image")
  for name in "${all_images[@]}"; do refs+=("azaion.local/$name:$tag"); done
  for ref in "${refs[@]}"; do
    size="$(docker image inspect --format '{{ .Size }}' "$ref" 2>/dev/null)" || {
      printf '%-44s %s\n' "$ref" "not built"
      continue
    }
    printf '%-44s %s\n' "$ref" "$(numfmt --to=si --suffix=B "$size")"
  done
}

# docker save | ctr import, skipped when containerd already holds that build
# (the same inputs label, copied onto the containerd image). The build it
# replaces is removed first, and its layers with it, before the new one is
# written: a lock change makes a new multi-gigabyte layer, and holding the old
# and the new at once (content and unpacked snapshot each) is what fills a disk.
load_containerd() {
  local socket="${1:-}" name ref key start
  [ -n "$socket" ] || die "usage: hack/images.sh load-containerd SOCKET [operator|queue|training ...]"
  shift
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=("${all_images[@]}")
  check_names "${names[@]}"
  [ -S "$socket" ] || die "no containerd socket at $socket"
  docker_up
  for name in "${names[@]}"; do
    ref="azaion.local/$name:$tag"
    key="$(image_label "$ref")"
    [ -n "$key" ] || die "$ref is not built (hack/images.sh build $name)"
    if ctr -a "$socket" -n k8s.io images ls "name==$ref" 2>/dev/null | grep -q "azaion.local.inputs=$key"; then
      echo "$name: already in containerd ($ref)"
      continue
    fi
    start=$SECONDS
    if ctr -a "$socket" -n k8s.io images ls -q "name==$ref" 2>/dev/null | grep -qx "$ref"; then
      ctr -a "$socket" -n k8s.io images rm --sync "$ref" >/dev/null
    fi
    docker save "$ref" | ctr -a "$socket" -n k8s.io images import - >/dev/null
    ctr -a "$socket" -n k8s.io images label "$ref" "azaion.local.inputs=$key" >/dev/null
    echo "$name: imported into containerd in $((SECONDS - start)) s ($ref)"
  done
}

down() {
  stop_pid "the wheel server" "$dir/wheels.pid"
  stop_pid dockerd "$dir/dockerd.pid"
}

command="${1:-build}"
[ $# -eq 0 ] || shift
case "$command" in
  build)
    take_lock
    build "$@"
    ;;
  base)
    take_lock
    docker_up
    if [ "$wheelhouse" = 1 ]; then serve_wheels; fi
    base
    ;;
  sizes) sizes ;;
  load-containerd)
    take_lock
    load_containerd "$@"
    ;;
  env)
    docker_up
    echo "export DOCKER_HOST=$DOCKER_HOST"
    echo "export DOCKER_BUILDKIT=0"
    ;;
  prune)
    take_lock
    docker_up
    docker image prune -f
    ;;
  down)
    take_lock
    down
    ;;
  -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command '$command' (build, base, sizes, load-containerd, env, prune, down)" ;;
esac
