#!/usr/bin/env bash
# Builds the container image (Dockerfile) without an image registry: both base images are made from
# Debian's packages (debootstrap), and the node is the host's release build (FXN_PREBUILT), for
# Debian's own cargo is too old to compile it in the build stage. Then it shows the image is
# self-contained: its filesystem, exported, runs `fxn --version`, `fxn init` and `fxn config check`
# under chroot as the image's user. With a registry at hand, `podman build -t fxn .` needs none of this.
#
#   scripts/image.sh [TAG]        # default localhost/fxn:latest
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-localhost/fxn:latest}
base=localhost/fxn-debian:bookworm

need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v cmake >/dev/null || need+=(cmake)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! podman image exists "$base"; then
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    tar -C "$root" -c . | podman import - "$base"
    rm -rf "$root"
fi

cargo build --locked --release -p fxn-node
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# chroot: containers cannot run here, and RUN steps need no more than it gives.
podman build --isolation chroot --format docker \
    --build-arg RUST_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" \
    --build-arg FXN_PREBUILT=target/release/fxn --build-arg FXN_COMMIT="$commit" \
    -t "$image" .

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
chmod 0755 "$rootfs"   # the image's root, which its user must be able to enter
# Created, never started: no health check timers.
container=$(podman create --no-healthcheck "$image")
podman export "$container" | tar -C "$rootfs" -x
podman rm "$container" >/dev/null
uid=$(chroot "$rootfs" id -u fxn)
echo "--- in the image's filesystem, as user fxn ($uid):"
chroot --userspec="$uid:$uid" "$rootfs" /usr/local/bin/fxn --version
# As the entrypoint would: in /etc/fxn, the volume, with the key its first `fxn init` writes.
chroot --userspec="$uid:$uid" "$rootfs" /bin/sh -c 'cd /etc/fxn && /usr/local/bin/fxn init && /usr/local/bin/fxn config check'
echo "--- $image: $(podman image inspect --format '{{.Size}}' "$image") bytes"
