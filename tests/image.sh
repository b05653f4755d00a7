#!/usr/bin/env bash
# Builds k8s/Dockerfile with buildah (daemonless: chroot isolation, vfs storage, all of it in a
# temporary directory) and runs the image: the server as uid 10001 answers /healthz and /readyz
# and writes its data dir, trackctl runs, the user, entrypoint and environment are the pod's.
#
# The machines this runs on reach no container registry, so the two base images are made here:
# debian:<release>-slim from a debootstrap of that release, and a stand-in for
# rust:<version>-slim-<release> that is the same Debian with a `cargo` which checks it is called as
# the Dockerfile must call it (build --release --locked --bin trackline --bin trackctl, make
# installed) and hands out the binaries the workspace's own build just made (TRACKLINE_IMAGE_BINS,
# default target/debug). Everything else in the Dockerfile runs for real: apt-get install make,
# the user, the copies, ENV, USER, VOLUME, ENTRYPOINT. Compiling inside the image (about 25 minutes
# on 2 cores) is what this does not do.
#
#   tests/image.sh          # as root (debootstrap, chroot); tests/run.sh runs it after the build
#
# Installs buildah and debootstrap from Debian when missing. Takes 2-4 minutes, most of it the
# debootstrap (DEBIAN_ROOTFS=<dir of an earlier debootstrap> skips it; DEBIAN_MIRROR picks the
# mirror). Needs about 1.5 GB free in /tmp while it runs (vfs copies every layer); leaves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir="$PWD"

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/image.sh: needs root (debootstrap and buildah's chroot isolation)" >&2
    exit 1
fi
bins="$(cd "${TRACKLINE_IMAGE_BINS:-target/debug}" && pwd)"
for b in trackline trackctl; do
    [ -x "$bins/$b" ] || { echo "tests/image.sh: no $bins/$b; build the workspace first" >&2; exit 1; }
done
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v ss >/dev/null || missing+=(iproute2)  # finds the server's pid by its port
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q && apt-get install -y -q "${missing[@]}"; }
fi

# The bases the Dockerfile names, from its own ARG defaults.
arg() { sed -n "s/^ARG $1=\(.*\)$/\1/p" k8s/Dockerfile | head -1; }
release="$(arg DEBIAN_RELEASE)"
rust="$(arg RUST_VERSION)"
[ -n "$release" ] && [ -n "$rust" ] || { echo "tests/image.sh: no ARG defaults in k8s/Dockerfile" >&2; exit 1; }

work="$(mktemp -d /tmp/trackline-image.XXXXXX)"
server_pid=""  # buildah run's
trackline_pid=""  # the server's inside it
cleanup() {
    # SIGTERM to the server itself (it flushes and exits), then to buildah run around it.
    [ -z "$trackline_pid" ] || kill "$trackline_pid" 2>/dev/null || true
    [ -z "$server_pid" ] || { sleep 1; kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
    # Containers first (they hold the storage's mounts), then the whole private store.
    buildah "${bh[@]}" rm --all >/dev/null 2>&1 || true
    umount -R "$work/storage" 2>/dev/null || true
    rm -rf "$work"
}
# A private store: nothing of this run stays in /var/lib/containers.
bh=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
trap cleanup EXIT

if [ -n "${DEBIAN_ROOTFS:-}" ]; then
    # A debootstrap of $release made before (saves its 2 minutes when trying this again).
    rootfs="$DEBIAN_ROOTFS"
else
    echo "image: debootstrap $release (minbase)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase "$release" "$rootfs" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
fi

c="$(buildah "${bh[@]}" from scratch)"
cp -a "$rootfs/." "$(buildah "${bh[@]}" mount "$c")/"
buildah "${bh[@]}" umount "$c" >/dev/null
buildah "${bh[@]}" commit -q "$c" "localhost/debian:$release-slim" >/dev/null
buildah "${bh[@]}" rm "$c" >/dev/null

c="$(buildah "${bh[@]}" from "localhost/debian:$release-slim")"
m="$(buildah "${bh[@]}" mount "$c")"
install -D -m 0755 "$bins/trackline" "$m/opt/prebuilt/trackline"
install -D -m 0755 "$bins/trackctl" "$m/opt/prebuilt/trackctl"
mkdir -p "$m/usr/local/cargo/bin"
cat > "$m/usr/local/cargo/bin/cargo" <<'EOF'
#!/bin/sh
# Stand-in cargo of tests/image.sh: checks how the Dockerfile calls it, then hands out prebuilt
# binaries where the real build would leave them.
set -eu
command -v make >/dev/null || { echo "stand-in cargo: make is not installed (jemalloc needs it)" >&2; exit 1; }
for want in build --release --locked "--bin trackline" "--bin trackctl"; do
    case " $* " in *" $want "*) ;; *) echo "stand-in cargo: called without $want: $*" >&2; exit 1 ;; esac
done
[ -f Cargo.lock ] && [ -f services/server/Cargo.toml ] || { echo "stand-in cargo: no workspace in $PWD" >&2; exit 1; }
mkdir -p target/release
cp /opt/prebuilt/trackline /opt/prebuilt/trackctl target/release/
EOF
chmod 0755 "$m/usr/local/cargo/bin/cargo"
buildah "${bh[@]}" umount "$c" >/dev/null
buildah "${bh[@]}" config \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
buildah "${bh[@]}" commit -q "$c" "localhost/rust:$rust-slim-$release" >/dev/null
buildah "${bh[@]}" rm "$c" >/dev/null

echo "image: buildah bud -f k8s/Dockerfile (chroot isolation, vfs storage)"
buildah "${bh[@]}" bud --isolation chroot --pull-never -f k8s/Dockerfile \
    -t localhost/trackline:test . > "$work/bud.log" 2>&1 \
    || { tail -n 30 "$work/bud.log" >&2; echo "image: FAIL: the Dockerfile does not build" >&2; exit 1; }

status=0
check() { # what, then the command
    local what="$1"; shift
    if "$@" >/dev/null 2>&1; then echo "image: ok: $what"; else echo "image: FAIL: $what" >&2; status=1; fi
}
conf="$(buildah "${bh[@]}" inspect --type image \
    --format '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.Env}}' \
    localhost/trackline:test)"
check "runs as 10001:10001" test "${conf%%|*}" = "10001:10001"
check "entrypoint is the server" grep -qF '|[/usr/local/bin/trackline]|' <<<"$conf"
check "data dir and shutdown grace of the pod in ENV" \
    grep -q 'TRACKLINE_DATA_DIR=/var/lib/trackline.*TRACKLINE_SHUTDOWN_GRACE_S=20' <<<"$conf"

c="$(buildah "${bh[@]}" from localhost/trackline:test)"
run() { buildah "${bh[@]}" run --isolation chroot "$c" -- "$@"; }
check "trackctl runs in the image" run /usr/local/bin/trackctl --help
owner="$(run stat -c %u /var/lib/trackline 2>/dev/null || true)"
check "the data dir belongs to uid 10001" test "$owner" = 10001
check "the init containers' shells exist" run /bin/bash -c 'test -x /bin/sh'

# The server itself, on a loopback port of its own (chroot isolation shares the host's network).
port=18991
buildah "${bh[@]}" run --isolation chroot --env "TRACKLINE_LISTEN=127.0.0.1:$port" \
    --env TRACKLINE_SECRET=image-test-secret-0123456789abcdef "$c" -- /usr/local/bin/trackline \
    > "$work/server.log" 2>&1 &
server_pid=$!
ready=""
for _ in $(seq 60); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then ready=1; break; fi
    sleep 0.5
done
http_get() { # path -> the status line of the answer
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" >&3
    head -n 1 <&3
    exec 3<&-
}
if [ -n "$ready" ]; then
    check "the server in the image answers /healthz" grep -q ' 200' <<<"$(http_get /healthz)"
    check "the server in the image is ready (its store opened)" grep -q ' 200' <<<"$(http_get /readyz)"
    trackline_pid="$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
    check "the server runs as uid 10001" grep -q "^Uid:[[:space:]]*10001[[:space:]]" \
        "/proc/${trackline_pid:-0}/status"
    # Seen through the server's own root: a second `buildah run` may get a fresh VOLUME.
    check "the server wrote its store into the data dir" \
        test -f "/proc/${trackline_pid:-0}/root/var/lib/trackline/db" -a \
             -d "/proc/${trackline_pid:-0}/root/var/lib/trackline/log"
else
    echo "image: FAIL: the server in the image did not listen on $port; its log:" >&2
    tail -n 20 "$work/server.log" >&2
    status=1
fi
exit "$status"
