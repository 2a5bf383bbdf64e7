# Sluice's container images, one target each:
#
#   docker build --target controller -t sluice:0.1.0 .            # `sluice` (controller, CLI)
#   docker build --target proxy      -t sluice-proxy:0.1.0 .      # the injected sidecar
#   docker build --target proxy-init -t sluice-proxy-init:0.1.0 . # its init container
#
# The chart's `controller.image`, `proxy.image` and `proxy.initImage` (and `sluice inject
# --image`, whose init image follows as `…-init:tag`) name them.
#
# The binaries are static (musl), so `controller` and `proxy` are `scratch` plus one file:
# no shell, no package manager, nothing to patch but Sluice itself. They run as non-root and
# need no writable path of their own (the chart and the injector set
# `readOnlyRootFilesystem: true`; the controller's state directory is a volume). TLS roots are
# compiled in (webpki-roots), so no CA bundle is copied.
#
# `proxy-init` needs iptables, which is not static: it is the proxy's binary on a minimal
# Alpine with `iptables`/`ip6tables` (nft and legacy). It runs as root with only NET_ADMIN and
# NET_RAW (the injector sets that), writes nothing but iptables' lock in `/run` (an emptyDir),
# and, for classic Jobs, copies `sluice-proxy` into the pod's shared volume (`--copy-to`).
#
# Not built or tested in this repository's CI: there is no Docker daemon and no registry to
# pull the base images from there. The binaries themselves are what the tests run.

ARG RUST_VERSION=1
ARG ALPINE_VERSION=3.20

FROM rust:${RUST_VERSION}-bookworm AS build
# llvm-tools and h2load: the proxy is built with profile-guided optimisation (scripts/pgo).
RUN rustup target add x86_64-unknown-linux-musl \
    && rustup component add llvm-tools \
    && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools nghttp2-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# protoc comes from protoc-bin-vendored; ring's C parts build with musl-gcc. The proxy is
# built twice by scripts/pgo: instrumented, then, after a minute of benchmark traffic through
# a pair of it on the build machine's loopback, optimised with that profile.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    export CC_x86_64_unknown_linux_musl=musl-gcc \
    && cargo build --release --locked --target x86_64-unknown-linux-musl -p sluice-controller \
    && proxy="$(scripts/pgo --target x86_64-unknown-linux-musl | tail -n 1)" \
    && mkdir -p /out \
    && cp target/x86_64-unknown-linux-musl/release/sluice "$proxy" /out/

FROM scratch AS controller
COPY --from=build /out/sluice /usr/local/bin/sluice
# The chart's pod securityContext uses the same (distroless' "nonroot").
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]

FROM scratch AS proxy
COPY --from=build /out/sluice-proxy /usr/local/bin/sluice-proxy
# The injector's default --proxy-uid: the UID `sluice-proxy init` exempts from interception.
USER 2102:2102
ENTRYPOINT ["/usr/local/bin/sluice-proxy"]

FROM alpine:${ALPINE_VERSION} AS proxy-init
RUN apk add --no-cache iptables ip6tables
COPY --from=build /out/sluice-proxy /usr/local/bin/sluice-proxy
ENTRYPOINT ["/usr/local/bin/sluice-proxy"]
CMD ["init"]
