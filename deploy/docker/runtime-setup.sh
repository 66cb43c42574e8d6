#!/bin/sh
# The runtime image's own set-up, run as root once its packages are installed: ferroserve's
# user and group (uid/gid 10001, as the Kubernetes manifests' securityContext expects), its home
# (FERROSERVE_HOME: the archive cache, Python models' code), the model folder /models and the
# folder of ONNX Runtime's library.
#
# ONE copy for every consumer, so they cannot drift: Dockerfile and Dockerfile.cuda run it in their
# runtime stage, and scripts/container-rootfs.sh runs it inside the debootstrapped file system
# that tests/python/test_container.py starts. Idempotent.
set -eu

FERROSERVE_UID=10001
FERROSERVE_GID=10001
FERROSERVE_HOME=/var/lib/ferroserve
MODELS=/models

if ! getent group ferroserve >/dev/null; then
  groupadd --gid "$FERROSERVE_GID" ferroserve
fi
if ! getent passwd ferroserve >/dev/null; then
  useradd --uid "$FERROSERVE_UID" --gid "$FERROSERVE_GID" --home-dir "$FERROSERVE_HOME" \
    --no-create-home --no-log-init --shell /usr/sbin/nologin ferroserve
fi
install -d -o "$FERROSERVE_UID" -g "$FERROSERVE_GID" -m 0755 "$FERROSERVE_HOME" "$MODELS"
install -d -m 0755 /usr/local/lib/ferroserve
