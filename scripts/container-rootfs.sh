#!/usr/bin/env bash
# Builds the file system of the Dockerfile's runtime stage into DEST without Docker (no engine
# needed), for tests/python/test_container.py, which starts the image's ENTRYPOINT + CMD in it:
#   1. Debian (the suite of the runtime stage's `FROM debian:SUITE-slim`), debootstrap's minbase
#      plus the Dockerfile's RUNTIME_PACKAGES (read from the Dockerfile: one list for both),
#      cached as ~/.cache/ferroserve/rootfs-<hash of suite, arch and packages>.tar so that later
#      runs only unpack it (FERROSERVE_ROOTFS_CACHE sets the folder, DEBIAN_MIRROR the mirror);
#   2. deploy/docker/runtime-setup.sh run inside it, as the Dockerfile's RUN does (user 10001,
#      /var/lib/ferroserve, /models);
#   3. the release binary (FERROSERVE_BIN, else $CARGO_TARGET_DIR/release/ferroserve with
#      CARGO_TARGET_DIR defaulting to ~/.cache/ferroserve/target) and ONNX Runtime's library
#      (ORT_DYLIB_PATH, else $FERROSERVE_HOME/lib/libonnxruntime.so, as scripts/setup.sh puts it)
#      at the paths of the Dockerfile's COPY --from lines;
#   4. a check that every shared library the binary and libonnxruntime.so need is in DEST.
# Needs root (debootstrap, chroot); installs Debian's debootstrap with apt when it is missing.
# DEST must not exist or be empty.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/Dockerfile"
SETUP="$ROOT/deploy/docker/runtime-setup.sh"
CACHE="${FERROSERVE_ROOTFS_CACHE:-$HOME/.cache/ferroserve}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BIN="${FERROSERVE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/ferroserve/target}/release/ferroserve}"
ORT_LIB="${ORT_DYLIB_PATH:-${FERROSERVE_HOME:-$HOME/.ferroserve}/lib/libonnxruntime.so}"
# The PATH of Debian's images, for commands run inside DEST.
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf '==> %s\n' "$*"; }
die() { printf 'container-rootfs.sh: %s\n' "$*" >&2; exit 1; }

[ $# = 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
DEST="$1"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
[ -x "$BIN" ] || die "no ferroserve binary at $BIN (build it: scripts/setup.sh, or set FERROSERVE_BIN)"
[ -f "$ORT_LIB" ] || die "no ONNX Runtime library at $ORT_LIB (scripts/setup.sh puts it there)"
if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST")" ]; then die "$DEST is not empty"; fi

# What the Dockerfile says. Exactly one match each, or the Dockerfile changed shape.
one() { # PATTERN (sed -n expression printing the value) WHAT
  local v
  v=$(sed -n "$1" "$DOCKERFILE")
  [ -n "$v" ] && [ "$(printf '%s\n' "$v" | wc -l)" = 1 ] || die "cannot read $2 from $DOCKERFILE"
  printf '%s\n' "$v"
}
PACKAGES=$(one 's/^ARG RUNTIME_PACKAGES="\([^"]*\)"$/\1/p' "ARG RUNTIME_PACKAGES=\"...\"")
SUITE=$(one 's/^FROM debian:\([a-z]*\)-slim AS runtime$/\1/p' "FROM debian:SUITE-slim AS runtime")
BIN_DEST=$(one 's|^COPY --from=build /out/ferroserve \(/[^ ]*\)$|\1|p' "COPY --from=build /out/ferroserve DEST")
LIB_DEST=$(one 's|^COPY --from=onnxruntime /out/libonnxruntime.so \(/[^ ]*\)$|\1|p' "COPY --from=onnxruntime ... DEST")
ARCH=$(dpkg --print-architecture)

# 1. The base file system, cached by what goes into it (and by this step's own version, v1).
KEY=$(printf 'v1\n%s\n%s\n%s\n' "$SUITE" "$ARCH" "$PACKAGES" | sha256sum | cut -c1-16)
TARBALL="$CACHE/rootfs-$KEY.tar"
if [ -f "$TARBALL" ]; then
  say "Debian $SUITE ($ARCH) + $PACKAGES: cached at $TARBALL"
else
  say "Debian $SUITE ($ARCH) minbase + $PACKAGES with debootstrap from $MIRROR -> $TARBALL"
  if ! command -v debootstrap >/dev/null; then
    say "installing Debian's debootstrap"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
  fi
  mkdir -p "$CACHE"
  WORK=$(mktemp -d "$CACHE/rootfs-$KEY.XXXXXX")
  # debootstrap mounts /proc and /sys in the target while it installs; never delete through one
  # it left behind.
  cleanup() {
    awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
    rm -rf "$WORK"
  }
  trap cleanup EXIT
  debootstrap --variant=minbase --arch="$ARCH" --include="${PACKAGES// /,}" \
    "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # As the Dockerfile's RUN leaves it: no package lists, no downloaded .debs.
  rm -rf "$WORK/root/var/lib/apt/lists/"* "$WORK/root/var/cache/apt/archives/"*.deb \
    "$WORK/root/var/log/bootstrap.log"
  tar --numeric-owner -C "$WORK/root" -cf "$WORK/rootfs.tar" .
  mv "$WORK/rootfs.tar" "$TARBALL"
  cleanup
  trap - EXIT
  say "cached $(du -h "$TARBALL" | cut -f1) at $TARBALL"
  # Those of other package lists are stale: the Dockerfile no longer asks for them.
  find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$KEY.tar" -print -delete \
    | sed 's/^/==> removed stale /'
fi

say "unpacking into $DEST"
mkdir -p "$DEST"
tar --numeric-owner -C "$DEST" -xpf "$TARBALL"

# 2. The Dockerfile's RUN: deploy/docker/runtime-setup.sh, inside.
say "running deploy/docker/runtime-setup.sh inside (user 10001, /var/lib/ferroserve, /models)"
install -m 0755 "$SETUP" "$DEST/tmp/runtime-setup.sh"
chroot "$DEST" /usr/bin/env -i PATH="$IMAGE_PATH" /bin/sh /tmp/runtime-setup.sh
rm -f "$DEST/tmp/runtime-setup.sh"

# 3. The Dockerfile's COPY --from lines.
say "$BIN -> $BIN_DEST"
install -D -m 0755 "$BIN" "$DEST$BIN_DEST"
say "$ORT_LIB -> $LIB_DEST"
install -D -m 0644 "$ORT_LIB" "$DEST$LIB_DEST"

# 4. Every library they link is there (a package missing from RUNTIME_PACKAGES shows here).
for f in "$BIN_DEST" "$LIB_DEST"; do
  out=$(chroot "$DEST" /usr/bin/env -i PATH="$IMAGE_PATH" ldd "$f") || die "ldd $f failed inside: $out"
  if printf '%s\n' "$out" | grep -q 'not found'; then
    die "$f needs libraries that RUNTIME_PACKAGES does not install:
$(printf '%s\n' "$out" | grep 'not found')"
  fi
done
say "runtime file system ready at $DEST"
