# quiver on the CPU backend: build stage + slim runtime with the default model baked in.
# docker build -t quiver . && docker run --rm -it quiver chat
FROM debian:12 AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        build-essential cmake pkg-config git ca-certificates python3 python3-pip \
        libpcre2-dev libutf8proc-dev libcjson-dev libuv1-dev libmicrohttpd-dev libcmocka-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQV_CUDA=OFF -DQV_BUILD_TESTS=OFF \
    && cmake --build build -j"$(nproc)" --target quiver
RUN QUIVER_HOME=/opt/quiver bash deploy/fetch-model.sh

FROM debian:12-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        libpcre2-8-0 libutf8proc2 libcjson1 libuv1 libmicrohttpd12 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/quiver /usr/local/bin/quiver
COPY --from=build /opt/quiver /opt/quiver
ENV QUIVER_HOME=/opt/quiver
ENTRYPOINT ["/usr/local/bin/quiver"]
CMD ["chat", "--message", "Hello! What can you do?"]
