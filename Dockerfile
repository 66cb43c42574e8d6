# syntax=docker/dockerfile:1
# ferroserve's container image (CPU). Build: docker build -t ferroserve .
# Run:   docker run -p 8000:8000 -v "$PWD/examples/models:/models" ferroserve
# The CUDA variant is Dockerfile.cuda. BuildKit is required (the default builder of Docker 23+).
#
# tests/python/test_container.py checks the runtime stage without a Docker engine: it builds the
# same file system with scripts/container-rootfs.sh (debootstrap of RUNTIME_PACKAGES below, then
# deploy/docker/runtime-setup.sh and the files the COPY --from lines name), and starts the
# ENTRYPOINT + CMD, ENV, USER and HEALTHCHECK parsed from this file. Keep RUNTIME_PACKAGES on one
# line and the COPY --from lines one per file: the script reads them.

ARG RUST_VERSION=1.95.0
ARG ORT_VERSION=1.31.1
# Everything the runtime stage installs: ONE list, read by scripts/container-rootfs.sh too.
# The binary links only glibc and libgcc/libstdc++ (ONNX Runtime), which every Debian has;
# python3 + python3-numpy run Python models (Triton python_backend, TorchServe handlers, Flow and
# Ray executors) and the HEALTHCHECK; ca-certificates lets their code reach HTTPS.
ARG RUNTIME_PACKAGES="ca-certificates python3 python3-numpy"

# ONNX Runtime's shared library, from the same onnxruntime wheel on PyPI as scripts/setup.sh.
# Its own stage: cached apart from the Rust build, and fetched while that compiles.
FROM python:3.11-slim-bookworm AS onnxruntime
ARG ORT_VERSION
ARG TARGETARCH
RUN set -eu; \
    case "${TARGETARCH:-$(dpkg --print-architecture)}" in \
      amd64) platform=manylinux_2_28_x86_64 ;; \
      arm64) platform=manylinux_2_28_aarch64 ;; \
      *) echo "no onnxruntime wheel is published for ${TARGETARCH}" >&2; exit 1 ;; \
    esac; \
    pip download --no-cache-dir --no-deps --only-binary=:all: --platform "$platform" \
      --python-version 3.11 --implementation cp -d /wheel "onnxruntime==${ORT_VERSION}"; \
    mkdir /out; \
    python -c 'import glob, shutil, zipfile; \
z = zipfile.ZipFile(glob.glob("/wheel/*.whl")[0]); \
name = next(n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so.")); \
shutil.copyfileobj(z.open(name), open("/out/libonnxruntime.so", "wb"))'; \
    rm -rf /wheel

# The release binary. Dependencies and the target folder live in BuildKit cache mounts, so a
# rebuild after a source change recompiles only the workspace's own crates.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the workspace needs to build (.dockerignore keeps the rest out of the context).
COPY Cargo.toml Cargo.lock ./
COPY examples/custom-executor examples/custom-executor
COPY crates crates
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p ferroserve \
    && install -D -m 0755 target/release/ferroserve /out/ferroserve

FROM debian:bookworm-slim AS runtime
ARG RUNTIME_PACKAGES
# Packages first, then the user and folders (deploy/docker/runtime-setup.sh), then the two files:
# a new binary reuses the layers above it.
RUN --mount=type=bind,source=deploy/docker/runtime-setup.sh,target=/tmp/runtime-setup.sh \
    set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES}; \
    rm -rf /var/lib/apt/lists/*; \
    sh /tmp/runtime-setup.sh
COPY --from=onnxruntime /out/libonnxruntime.so /usr/local/lib/ferroserve/libonnxruntime.so
COPY --from=build /out/ferroserve /usr/local/bin/ferroserve
ENV ORT_DYLIB_PATH=/usr/local/lib/ferroserve/libonnxruntime.so
ENV FERROSERVE_HOME=/var/lib/ferroserve
# What HEALTHCHECK asks; set it when the server listens elsewhere (-e FERROSERVE_HEALTH_URL=...).
ENV FERROSERVE_HEALTH_URL=http://127.0.0.1:8000/v2/health/ready
WORKDIR /var/lib/ferroserve
# The model repository (owned by the ferroserve user): mount it, or COPY models into a derived
# image. No VOLUME, so that a derived image's RUN steps may still write there.
# 8000 HTTP, 8001 gRPC (the defaults); 8080 and 9000 are KServe's, used by the manifests.
EXPOSE 8000 8001 8080 9000
# Python's urllib: slim images have no curl. Exits 1 unless the server answers 200 (ready).
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['FERROSERVE_HEALTH_URL'], timeout=4)"]
USER 10001:10001
ENTRYPOINT ["ferroserve"]
CMD ["serve", "--model-repository=/models", "--host=0.0.0.0"]
