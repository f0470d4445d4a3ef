# syntax=docker/dockerfile:1
#
# The `host` binary in a runtime image that holds nothing else.
#
#   docker build -t wasm-sockets-host:0.1.0 .
#   docker run --rm -p 7000:7000/udp -p 7000:7000/tcp -p 9090:9090 \
#     -v "$PWD/target/plugins:/plugins:ro" wasm-sockets-host:0.1.0 \
#     --plugin /plugins/echo.wasm --listen 0.0.0.0:7000 --metrics 0.0.0.0:9090
#
# Mount the plugin's *directory*, not the file: a bind-mounted file keeps
# the inode it had when the container started, so replacing the file on the
# host (rename or new ConfigMap data) would never be seen inside.

# The builder and the runtime image are both Debian 12 (bookworm): the binary
# links the builder's glibc dynamically and needs the same one, or newer, at
# run time.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directories are BuildKit caches, so a rebuild after
# a source change does not download and compile wasmtime again; the binary is
# copied out of the cache in the same step. `--locked`: the versions in
# Cargo.lock, the ones the tests ran with.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p host \
    && install -D -m 0755 target/release/host /out/host
RUN mkdir /out/empty

# distroless/cc: glibc, libgcc_s (the binary's only libraries), CA
# certificates and a passwd entry for `nonroot` (65532), and no shell,
# package manager or other binaries for an intruder to use. Debugging is
# `kubectl debug` with an ephemeral container; the Kubernetes preStop pause
# is the kubelet's `sleep` action, which needs no shell in the image.
FROM gcr.io/distroless/cc-debian12:nonroot
# The binary and the plugin directory stay root's: the user the host runs
# as cannot replace its own code. The cache and data directories are the
# user's.
COPY --from=build /out/host /usr/local/bin/host
COPY --from=build /out/empty /plugins
COPY --from=build --chown=65532:65532 /out/empty /var/cache/wasm-sockets-host
COPY --from=build --chown=65532:65532 /out/empty /var/lib/wasm-sockets-host
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 65532:65532
# Without --cache-dir and --data-dir the host uses
# $XDG_CACHE_HOME/wasm-sockets-host and $XDG_DATA_HOME/wasm-sockets-host:
# the directories above, writable by 65532.
ENV XDG_CACHE_HOME=/var/cache XDG_DATA_HOME=/var/lib
# The example service (UDP and TCP on 7000) and the admin endpoint
# (--metrics: /metrics, /healthz, /readyz, /status).
EXPOSE 7000/udp 7000/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/host"]
# Replaced by whatever arguments `docker run` or a pod spec gives.
CMD ["--plugin", "/plugins/plugin.wasm", "--listen", "0.0.0.0:7000", "--metrics", "0.0.0.0:9090"]
