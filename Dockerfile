# quiver server image: a build stage and a slim runtime stage with the default model baked in.
#
# CPU (Debian 12):
#   docker build -t quiver .
#   docker run --rm -p 8000:8000 --cpus 4 -v quiver-data:/var/lib/quiver quiver
# NVIDIA GPU (CUDA 13 images on Ubuntu 24.04; run with the NVIDIA container toolkit):
#   docker build -t quiver:cuda --build-arg QV_CUDA=ON \
#       --build-arg BUILD_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04 \
#       --build-arg RUN_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04 .
#   docker run --rm --gpus all -p 8000:8000 -v quiver-data:/var/lib/quiver quiver:cuda \
#       serve --device cuda
# The server binds 0.0.0.0:8000, keeps its adapter store on the /var/lib/quiver volume, runs as
# an unprivileged user, drains on SIGTERM (docker stop; give it --stop-timeout longer than
# QUIVER_DRAIN_TIMEOUT_S) and reports healthy once /ready answers 200. Every flag of
# `quiver serve` is also an environment variable (docs/http-api.md), e.g. -e QUIVER_ADMIN_KEY=...
# docs/deploy.md has the load balancer and Kubernetes settings.
ARG BUILD_IMAGE=debian:12
ARG RUN_IMAGE=debian:12-slim

FROM ${BUILD_IMAGE} AS build
ARG QV_CUDA=OFF
ARG CUDA_ARCHITECTURES=80;90
# the commit `quiver --version` and /version report (the build context has no .git; an ARG is
# in the environment of RUN, where server/version.cmake reads it):
#   --build-arg QV_GIT_COMMIT=$(git rev-parse --short=12 HEAD)
ARG QV_GIT_COMMIT=unknown
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        build-essential cmake pkg-config ca-certificates python3 python3-pip \
        libpcre2-dev libutf8proc-dev libcjson-dev libuv1-dev libmicrohttpd-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQV_BUILD_TESTS=OFF \
        -DQV_CUDA=${QV_CUDA} -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
    && cmake --build /build -j"$(nproc)" --target quiver \
    && bash deploy/runtime-packages.sh /build/quiver >/build/runtime-packages.txt
RUN QUIVER_HOME=/opt/quiver bash deploy/fetch-model.sh

FROM ${RUN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=build /build/runtime-packages.txt /tmp/runtime-packages.txt
# the libraries the binary links (the list the build stage derived with dpkg -S), curl for the
# health check
RUN apt-get update -qq \
    && xargs -a /tmp/runtime-packages.txt apt-get install -y -qq --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && useradd --system --uid 10001 --home-dir /var/lib/quiver --create-home quiver
COPY --from=build /build/quiver /usr/local/bin/quiver
COPY --from=build /opt/quiver/models /opt/quiver/models
COPY deploy/demo-adapters /opt/quiver/demo-adapters
ENV QUIVER_HOME=/opt/quiver \
    QUIVER_HOST=0.0.0.0 \
    QUIVER_PORT=8000 \
    QUIVER_ADAPTER_STORE=/var/lib/quiver/adapters \
    QUIVER_RESPONSES_DIR=/var/lib/quiver/responses
VOLUME /var/lib/quiver
USER quiver
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${QUIVER_PORT}/ready" || exit 1
ENTRYPOINT ["/usr/local/bin/quiver"]
CMD ["serve"]
