# Shared by scripts/demo and scripts/test: what the project needs on a fresh Debian machine,
# and the helpers that install it. This is the one place to extend when an issue needs a new
# tool: add the Debian package or the Python package to the lists below.
#
# Everything here is idempotent: what is already present is skipped, so re-running on the
# same machine (as CI does) costs a few dpkg look-ups and no network.

# Debian packages the test suite needs.
#   iptables, iproute2: transparent-proxy redirection and network namespaces (proxy tests)
#   curl, nghttp2-client: HTTP/1.1 and HTTP/2 clients for end-to-end tests
#   prometheus: `promtool`, to check the metrics the proxy exposes
#   openssl: an independently made CA for the controller's CA-from-files test
#   chromium, chromium-driver: the portal's browser test (integration/tests/portal_browser.rs)
#     drives a real headless Chromium through /usr/bin/chromedriver
TEST_APT_PACKAGES=(iptables iproute2 curl nghttp2-client prometheus python3-pip openssl chromium chromium-driver)

# Debian packages the demo needs: the local mesh runs workloads in network namespaces with
# iptables interception (iproute2, iptables), and the demo talks to it with curl.
DEMO_APT_PACKAGES=(iptables iproute2 curl)

# Debian packages the benchmarks need (`scripts/bench`).
#   nginx: the reference proxy pair the mesh benchmark compares sluice-proxy with
#   haproxy: the second reference pair (HTTP/1.1 and HTTP/2 / gRPC), one thread each
#   nghttp2-client: h2load, the HTTP/2 and gRPC load generator
#   gnuplot-nox: the soak's plot of RSS and p99 over time (PNG)
#   valgrind: `--callgrind`, instructions per request (repeatable on a busy machine)
BENCH_APT_PACKAGES=(nginx haproxy nghttp2-client gnuplot-nox valgrind)

# Python packages (pip), as `import-name=pip-name`.
#   grpc: a real gRPC peer for the proxy's gRPC tests
#   grpc_status: decodes the rich gRPC status (ErrorInfo, Help) of mesh denials
#   selenium: drives Chromium in the portal's browser test (with the Debian chromedriver, so
#     Selenium Manager never downloads a browser or driver)
#   hypercorn: an application server that accepts `Upgrade: h2c`, for the test that the proxy
#     never lets an h2c upgrade through (proxy_security.rs)
TEST_PIP_PACKAGES=(grpc=grpcio grpc_status=grpcio-status selenium=selenium hypercorn=hypercorn)

SLUICE_LOG_DIR="${SLUICE_LOG_DIR:-${TMPDIR:-/tmp}/sluice-scripts}"
mkdir -p "$SLUICE_LOG_DIR"

# run_quietly NAME CMD...: runs CMD with its output in a log; prints the log only on failure.
run_quietly() {
    local name="$1"
    shift
    local log="$SLUICE_LOG_DIR/$name.log"
    if ! "$@" >"$log" 2>&1; then
        echo "FAILED: $name ($*)" >&2
        tail -n 200 "$log" >&2
        return 1
    fi
}

# ensure_apt_packages PKG...: installs the packages that are not installed yet.
ensure_apt_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    echo "installing Debian packages: ${missing[*]}"
    local sudo=()
    if ((EUID != 0)); then
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    run_quietly apt-update "${sudo[@]}" apt-get update
    run_quietly apt-install "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
}

# ensure_pip_packages IMPORT=PIP...: pip-installs the modules that python3 cannot import yet.
ensure_pip_packages() {
    local missing=()
    local spec
    for spec in "$@"; do
        if ! python3 -c "import ${spec%%=*}" >/dev/null 2>&1; then
            missing+=("${spec#*=}")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    echo "installing Python packages: ${missing[*]}"
    # Debian's own python3 refuses system-wide pip installs (PEP 668) unless told otherwise.
    run_quietly pip-install python3 -m pip install --quiet --break-system-packages "${missing[@]}" ||
        run_quietly pip-install python3 -m pip install --quiet "${missing[@]}"
}

# ensure_rust: the toolchain comes with the machine (rustup); make sure the components the
# test command uses are there.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || {
        echo "cargo not found: install Rust with rustup first" >&2
        return 1
    }
    local component
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            run_quietly "rustup-$component" rustup component add "$component"
        fi
    done
}
