# The fxn node's image: `fxn start` on the files of the /etc/fxn volume, as a user of its own.
#
#   docker build -t fxn .     # compiles the node in the build stage (podman: add --format docker,
#                             # or its OCI format drops the HEALTHCHECK)
#   scripts/image.sh          # without a registry: local bases and the host's release build
#
# Both base images are build arguments, so a mirror or a locally made base can stand in for them.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The context has no .git (see .dockerignore): the commit `fxn --version` names comes from here.
ARG FXN_COMMIT=unknown
# FXN_PREBUILT names a binary in the context to take instead of compiling one: a host build for the
# same Debian release (scripts/image.sh passes target/release/fxn, the one file of target/ the
# context holds).
ARG FXN_PREBUILT=
RUN if [ -n "$FXN_PREBUILT" ]; then cp "$FXN_PREBUILT" /fxn; else \
        apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/* \
        && FXN_COMMIT="$FXN_COMMIT" cargo build --locked --release -p fxn-node && cp target/release/fxn /fxn; \
    fi

FROM ${RUNTIME_IMAGE}
# CA certificates: HTTPS backends and RPC providers are checked against the system roots.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --home-dir /etc/fxn --no-create-home --shell /usr/sbin/nologin fxn
COPY --from=build /fxn /usr/local/bin/fxn
# The image's files: listening on every interface, so that published ports reach the node and its
# metrics, and every model sent to the host `backend` (the compose file's vLLM or Ollama). No key:
# each node makes its own in its volume (`fxn init` there), never one shared by every container.
RUN /usr/local/bin/fxn init --dir /etc/fxn --listen-address 0.0.0.0 --backend-url http://backend:8000 --no-key \
    && chown -R fxn:fxn /etc/fxn
# NVML (IDENTITY's gpuStats, the GPU metrics) is the host driver's libnvidia-ml, which the NVIDIA
# container toolkit mounts into a container given a GPU; "utility" is the capability that carries it.
ENV NVIDIA_DRIVER_CAPABILITIES=utility
USER fxn
WORKDIR /etc/fxn
VOLUME /etc/fxn
EXPOSE 8080 9100
# /health over bash's /dev/tcp: the image has no HTTP client, and needs none.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
# The files are read from the working directory, /etc/fxn: config.yaml, model_backend.yaml, conf/fxn.yaml.
ENTRYPOINT ["/usr/local/bin/fxn", "start"]
