//! A real Kubernetes API server for the tests: etcd and kube-apiserver v1.20 (built once per
//! machine by `scripts/lib.sh`'s `ensure_kube`), on 127.0.0.1, with etcd's data in a temporary
//! directory.
//!
//! One API server per test binary ([`shared`]): starting one costs ~3 s and ~350 MB. Tests that
//! share it take [`ApiServer::exclusive`] and start from an empty mesh ([`ApiServer::reset`]),
//! since Sluice's policy is cluster-wide.
//!
//! There is no kubelet, scheduler or controller-manager: nothing runs pods, and no controller
//! fills in Endpoints. A test that needs a pod "running" creates the Pod and patches its
//! status the way a kubelet would ([`ApiServer::mark_pod_ready`]), and says so.
//!
//! The processes are started from a thread that lives as long as the test process, through
//! `setpriv --pdeathsig KILL`, so they die with it even when a test panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The binaries `ensure_kube` provides.
const BINARIES: [&str; 3] = ["kube-apiserver", "etcd", "kubectl"];

/// The bearer token of the test's cluster admin (`system:masters`).
pub const ADMIN_TOKEN: &str = "sluice-test-admin-token";

/// Where `ensure_kube` put the cluster binaries, if it did: `SLUICE_KUBE_BIN`, else the
/// default cache directories.
pub fn bin_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("SLUICE_KUBE_BIN") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("SLUICE_KUBE_CACHE") {
        candidates.push(PathBuf::from(dir).join("bin"));
    }
    candidates.push(PathBuf::from("/var/cache/sluice-kube/bin"));
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cache) = cache {
        candidates.push(cache.join("sluice-kube/bin"));
    }
    candidates
        .into_iter()
        .find(|d| BINARIES.iter().all(|b| d.join(b).exists()))
}

/// Why the Kubernetes tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if bin_dir().is_none() {
        return Some(
            "no kube-apiserver/etcd/kubectl: run `source scripts/lib.sh && ensure_kube` \
             (./scripts/test does) to build them into /var/cache/sluice-kube"
                .into(),
        );
    }
    if !crate::have("setpriv") {
        return Some("setpriv (util-linux) is missing".into());
    }
    None
}

/// A running etcd and API server.
pub struct ApiServer {
    /// Working directory: etcd data, certificates, kubeconfig, logs.
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:port`.
    pub url: String,
    /// The kubeconfig of the cluster admin.
    pub kubeconfig: PathBuf,
    /// The directory of the binaries.
    pub bin: PathBuf,
    /// How long the API server took from start to ready.
    pub startup: Duration,
    lock: Mutex<()>,
    _children: Vec<ChildGuard>,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The API server of this test process, started on first use. `None` (after printing why)
/// when the binaries are missing.
pub fn shared(test: &str) -> Option<&'static ApiServer> {
    static SERVER: OnceLock<Option<ApiServer>> = OnceLock::new();
    if let Some(reason) = skip_reason() {
        crate::skip(test, &reason);
        return None;
    }
    SERVER
        .get_or_init(|| Some(ApiServer::start_for_process()))
        .as_ref()
}

impl ApiServer {
    /// [`ApiServer::start`] from a thread that lives as long as the process. `--pdeathsig`
    /// fires when the *thread* that started a child ends, so a server started from a test's
    /// or a blocking pool's thread would die with that thread.
    pub fn start_for_process() -> ApiServer {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ApiServer::start());
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the API server thread")
    }

    /// Starts etcd and the API server and waits until the API server is ready. They die with
    /// the calling thread (see [`ApiServer::start_for_process`]).
    pub fn start() -> ApiServer {
        let bin = bin_dir().expect("cluster binaries");
        let started = Instant::now();
        // Ports are chosen by the kernel (bound, released, passed on); a start that loses the
        // race is retried on fresh ports.
        let mut attempt = 0;
        loop {
            match Self::try_start(&bin) {
                Ok(mut server) => {
                    server.startup = started.elapsed();
                    eprintln!(
                        "kube-apiserver ready at {} after {:.1}s",
                        server.url,
                        server.startup.as_secs_f64()
                    );
                    return server;
                }
                Err(e) if attempt < 2 => {
                    eprintln!("kube-apiserver did not start; retrying on other ports: {e}");
                    attempt += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn try_start(bin: &Path) -> Result<ApiServer, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (ca_pem, cert_pem, key_pem) = serving_certificate();
        std::fs::write(d.join("ca.crt"), &ca_pem).expect("write");
        std::fs::write(d.join("apiserver.crt"), &cert_pem).expect("write");
        std::fs::write(d.join("apiserver.key"), &key_pem).expect("write");
        let sa_key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(d.join("sa.key"), sa_key.serialize_pem()).expect("write");
        // The API server reads the verification key from a public-key PEM.
        std::fs::write(d.join("sa.pub"), sa_key.public_key_pem()).expect("write");
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .expect("write");
        {
            let etcd_port = crate::free_port();
            let peer_port = crate::free_port();
            let api_port = crate::free_port();
            let etcd = spawn(
                &bin.join("etcd"),
                &[
                    "--data-dir".into(),
                    d.join("etcd").display().to_string(),
                    "--listen-client-urls".into(),
                    format!("http://127.0.0.1:{etcd_port}"),
                    "--advertise-client-urls".into(),
                    format!("http://127.0.0.1:{etcd_port}"),
                    "--listen-peer-urls".into(),
                    format!("http://127.0.0.1:{peer_port}"),
                    "--initial-advertise-peer-urls".into(),
                    format!("http://127.0.0.1:{peer_port}"),
                    "--initial-cluster".into(),
                    format!("default=http://127.0.0.1:{peer_port}"),
                    "--unsafe-no-fsync".into(),
                ],
                &d.join("etcd.log"),
            );
            let sa = d.join("sa.key").display().to_string();
            let sa_pub = d.join("sa.pub").display().to_string();
            let api = spawn(
                &bin.join("kube-apiserver"),
                &[
                    format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={api_port}"),
                    "--insecure-port=0".into(),
                    format!("--tls-cert-file={}", d.join("apiserver.crt").display()),
                    format!(
                        "--tls-private-key-file={}",
                        d.join("apiserver.key").display()
                    ),
                    format!("--token-auth-file={}", d.join("tokens.csv").display()),
                    "--authorization-mode=RBAC".into(),
                    format!("--service-account-key-file={sa_pub}"),
                    format!("--service-account-signing-key-file={sa}"),
                    "--service-account-issuer=https://kubernetes.default.svc".into(),
                    "--api-audiences=https://kubernetes.default.svc,sluice".into(),
                    // Nothing creates the `default` service accounts without a
                    // controller-manager; tests create the accounts they use.
                    "--disable-admission-plugins=ServiceAccount".into(),
                    "--service-cluster-ip-range=10.96.0.0/16".into(),
                    "--allow-privileged=true".into(),
                    "--logtostderr=true".into(),
                    "--v=1".into(),
                ],
                &d.join("apiserver.log"),
            );
            let url = format!("https://127.0.0.1:{api_port}");
            let kubeconfig = d.join("kubeconfig");
            std::fs::write(&kubeconfig, kubeconfig_text(&url, &ca_pem, ADMIN_TOKEN))
                .expect("write kubeconfig");
            let server = ApiServer {
                url,
                kubeconfig,
                bin: bin.to_owned(),
                startup: Duration::ZERO,
                lock: Mutex::new(()),
                _children: vec![ChildGuard(api), ChildGuard(etcd)],
                dir,
            };
            match server.wait_ready(Duration::from_secs(60)) {
                Ok(()) => Ok(server),
                Err(e) => Err(format!("{e}\n{}", server.logs())),
            }
        }
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]).output();
            if out.as_ref().is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the API server was not ready within {timeout:?}: {}",
                    out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                        .unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of etcd's and the API server's logs.
    pub fn logs(&self) -> String {
        let tail = |f: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- etcd ---\n{}\n--- kube-apiserver ---\n{}",
            tail("etcd.log"),
            tail("apiserver.log")
        )
    }

    /// `kubectl` (1.20, the server's version) with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs kubectl and returns stdout; panics with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).output().expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl with `input` on stdin; returns (success, stdout, stderr).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> (bool, String, String) {
        use std::io::Write;
        let mut child = self
            .kubectl(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Registers the chart's MutatingWebhookConfiguration (the sidecar injector) as
    /// `helm template` renders it for a release in `namespace`, with each webhook's service
    /// replaced by `https://{addr}{path}` (the controller runs beside the API server, not in a
    /// pod) and `caBundle` set to `ca_pem`: the same selectors, failure policies, timeouts and
    /// reinvocation policy as installed.
    pub fn register_chart_injector(&self, namespace: &str, addr: &str, ca_pem: &str) {
        use base64::Engine;
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/sluice");
        let out = Command::new(self.bin.join("helm"))
            .args(["template", "sluice"])
            .arg(chart)
            .args(["-n", namespace, "--show-only", "templates/injector.yaml"])
            .output()
            .expect("helm template");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut config = sluice_policy::load::parse_yaml(&Path::new("injector.yaml").into(), &text)
            .0
            .into_iter()
            .map(|d| d.value)
            .find(|v| v["kind"] == "MutatingWebhookConfiguration")
            .expect("the chart renders a MutatingWebhookConfiguration");
        let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        for webhook in config["webhooks"].as_array_mut().expect("webhooks") {
            let path = webhook["clientConfig"]["service"]["path"]
                .as_str()
                .expect("path")
                .to_owned();
            webhook["clientConfig"] =
                serde_json::json!({"url": format!("https://{addr}{path}"), "caBundle": bundle});
        }
        let (ok, _, err) = self.kubectl_stdin(&["apply", "-f", "-"], &config.to_string());
        assert!(ok, "{err}");
    }

    /// Serialises the tests that share this server.
    pub fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deletes every Sluice resource and the test namespaces' Services and Pods, and the
    /// webhook configurations tests made, so the next test starts from an empty mesh.
    pub fn reset(&self) {
        let kinds = "meshes.sluice.dev,teams.sluice.dev,meshservices.sluice.dev,\
                     accesspolicies.sluice.dev,routes.sluice.dev,canarypolicies.sluice.dev";
        let _ = self
            .kubectl(&[
                "delete",
                "validatingwebhookconfigurations",
                "--all",
                "--wait=false",
            ])
            .output();
        let out = self
            .kubectl(&["delete", kinds, "--all", "--all-namespaces", "--wait=true"])
            .output()
            .expect("kubectl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("the server doesn't have a resource type"),
            "{err}"
        );
        for what in ["pods", "services"] {
            let _ = self
                .kubectl(&[
                    "delete",
                    what,
                    "--all",
                    "-n",
                    "default",
                    "--grace-period=0",
                    "--force",
                ])
                .output();
        }
    }

    /// Installs the CRDs from `deploy/crds` and waits until they are served.
    pub fn install_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        self.kubectl_ok(&["apply", "-f", &crds.display().to_string()]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=sluice",
        ]);
    }

    /// Patches a Pod's status the way a kubelet would once its containers run: an IP, phase
    /// Running, and the Ready condition. (There is no kubelet here.)
    pub fn mark_pod_ready(&self, namespace: &str, pod: &str, ip: &str) {
        let patch = serde_json::json!({
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                ],
            }
        });
        let (ok, _, err) = self.kubectl_stdin(
            &[
                "patch",
                "pod",
                pod,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "--patch-file=/dev/stdin",
            ],
            &patch.to_string(),
        );
        if !ok {
            // kubectl 1.20 has no --subresource: talk to the status endpoint directly.
            self.raw_patch(
                &format!("/api/v1/namespaces/{namespace}/pods/{pod}/status"),
                &patch,
            )
            .unwrap_or_else(|e| panic!("patch pod status: {err} / {e}"));
        }
    }

    /// A merge patch straight to the API (for subresources kubectl 1.20 cannot reach).
    pub fn raw_patch(&self, path: &str, patch: &serde_json::Value) -> Result<(), String> {
        let ca = self.dir.path().join("ca.crt");
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", "PATCH", "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                &format!("Authorization: Bearer {ADMIN_TOKEN}"),
                "-H",
                "Content-Type: application/merge-patch+json",
                "--data",
                &patch.to_string(),
                &format!("{}{path}", self.url),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The CA that signed the API server's certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The API server's address.
    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("https://")
            .parse()
            .expect("addr")
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

/// A CA and a serving certificate for 127.0.0.1 and localhost, as PEM.
fn serving_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test cluster CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let issuer = Issuer::new(ca, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn kubeconfig_text(url: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: default\ncurrent-context: test\n",
        encode(ca_pem.as_bytes())
    )
}

/// `sluice controller --kubernetes` against the test cluster, killed on drop.
pub struct KubeController {
    /// The controller process.
    pub child: Child,
    state: tempfile::TempDir,
    args: Vec<String>,
    /// Its gRPC API, `https://ADDR` (what proxies dial).
    pub grpc: String,
    /// The webhook's address, when it serves one.
    pub webhook: Option<String>,
}

impl KubeController {
    /// Its `--state-dir` (what `sluice env`, `sluice rollout` and `sluice identity` are pointed at).
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    /// `sluice controller --kubernetes` against `api`, with `extra` flags; returns once it
    /// listens.
    pub fn start(api: &ApiServer, extra: &[&str]) -> KubeController {
        Self::start_with_kubeconfig(&api.kubeconfig, extra)
    }

    /// The same with another kubeconfig (another user's rights).
    pub fn start_with_kubeconfig(kubeconfig: &Path, extra: &[&str]) -> KubeController {
        Self::start_listening(kubeconfig, "127.0.0.1:0", extra)
    }

    /// With the gRPC API (what proxies dial) on `listen`.
    pub fn start_listening(kubeconfig: &Path, listen: &str, extra: &[&str]) -> KubeController {
        let state = tempfile::tempdir().expect("state");
        let mut args: Vec<String> = vec![
            "controller".into(),
            "--kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--listen".into(),
            listen.to_owned(),
            "--state-dir".into(),
            state.path().join("state").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut me = KubeController {
            child: Self::spawn(&args, state.path()),
            state,
            args,
            grpc: String::new(),
            webhook: None,
        };
        me.wait_ready();
        me
    }

    fn spawn(args: &[String], dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("controller.log"))
            .expect("log");
        let out = std::fs::File::create(dir.join("stdout")).expect("stdout");
        Command::new(crate::controller::sluice_bin())
            .args(args)
            .env("SLUICE_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn sluice controller")
    }

    /// The mesh CA certificate its proxies trust it with (in the state directory, without
    /// `--ca-secret`).
    pub fn ca_file(&self) -> String {
        self.state
            .path()
            .join("state/ca/ca.crt")
            .display()
            .to_string()
    }

    /// A bootstrap token for `default/<service>`, signed with its token key.
    pub fn token(&self, service: &str) -> String {
        crate::controller::bootstrap_token(&self.state_dir(), service, "24h")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + crate::PATIENCE;
        loop {
            let out = std::fs::read_to_string(self.state.path().join("stdout")).unwrap_or_default();
            if let Some(addr) = out
                .lines()
                .find_map(|l| l.strip_prefix("sluice controller listening on "))
            {
                self.grpc = format!("https://{addr}");
                self.webhook = out
                    .lines()
                    .find_map(|l| l.strip_prefix("sluice controller webhook on "))
                    .map(str::to_owned);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("controller exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "controller did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it logged (stderr), across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("controller.log")).unwrap_or_default()
    }

    /// SIGKILL and start again with the same flags and state directory (as the Deployment's
    /// pod would be replaced; the state directory is an emptyDir that survives only a
    /// container restart, and nothing here depends on it).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.state.path().join("stdout"));
        self.child = Self::spawn(&self.args, self.state.path());
        self.wait_ready();
    }

    /// Its admin endpoint, `IP:PORT`.
    pub fn admin_addr(&self) -> String {
        std::fs::read_to_string(self.state.path().join("state/admin.addr"))
            .expect("admin.addr")
            .trim()
            .to_owned()
    }

    /// `GET /status` on the admin endpoint.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://{}/status", self.admin_addr())])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The policy version it publishes.
    pub fn version(&self) -> String {
        self.status()["snapshot"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.state.path().join("state/ca/ca.crt")).expect("ca.crt")
    }
}

impl Drop for KubeController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- controller log ---\n{}", self.log());
        }
    }
}
