//! Shared by the controller's end-to-end tests: the real `sluice controller` binary, started on
//! loopback port 0 and reached with a real gRPC client over TLS, as a proxy reaches it: trusting
//! the mesh CA, and presenting a workload certificate from `Certify` where a call needs one.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sluice_api::v1::mesh_client::MeshClient;
use tonic::transport::{Channel, Endpoint};

/// How long the controller may take to start (a cold debug binary on a busy CI machine).
pub const STARTUP: Duration = Duration::from_secs(30);

/// How long a test waits for something that normally takes a fraction of a second. Speed is
/// measured in `benches/` (the propagation benchmark), never asserted here.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The workspace root: relative paths in arguments (`examples/…`) are resolved from it.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller crate sits in the workspace root")
        .to_path_buf()
}

/// A running `sluice controller`, killed on drop if the test did not stop it.
pub struct Controller {
    pub child: Child,
    pub addr: SocketAddr,
    /// The mesh CA certificate clients trust it with (`STATE/ca/ca.crt` unless `--ca-cert`).
    pub ca: PathBuf,
    /// Its state directory (the token key, for bootstrap tokens).
    pub state: PathBuf,
    log: PathBuf,
}

/// A workload's certificate and key, as `Certify` issued them to a proxy.
pub struct WorkloadCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        WorkloadCert {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Controller {
    /// Starts the controller on `127.0.0.1:0` with `--state-dir state` and `extra`, and waits
    /// for the address it prints. Its log goes beside the state directory, one file per start.
    pub fn start(state: &Path, extra: &[&str]) -> Controller {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let log = state.with_extension(format!("log-{}-{nanos}", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("controller")
            .arg("--state-dir")
            .arg(state)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(repo_root())
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start sluice controller");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(STARTUP) {
            Ok(line) if !line.is_empty() => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the controller did not announce its address; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("sluice controller listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .expect("an address");
        let ca = extra
            .iter()
            .position(|a| *a == "--ca-cert")
            .and_then(|i| extra.get(i + 1))
            .map(|p| repo_root().join(p))
            .unwrap_or_else(|| state.join("ca/ca.crt"));
        Controller {
            child,
            addr,
            ca,
            state: state.to_owned(),
            log,
        }
    }

    /// A gRPC channel over TLS, trusting the mesh CA, presenting `cert` if given.
    pub async fn channel(
        &self,
        endpoint: Endpoint,
        cert: Option<&WorkloadCert>,
    ) -> Result<Channel, tonic::transport::Error> {
        let pem = std::fs::read(&self.ca).expect("read the mesh CA certificate");
        let roots = sluice_api::tls::roots_from_pem(&pem).expect("the CA is PEM");
        let client = cert.map(|c| {
            sluice_api::tls::fixed_client_cert(c.chain.clone(), c.key.clone_key())
                .expect("a usable workload certificate")
        });
        let config = sluice_api::tls::client_config(roots, client).expect("a TLS config");
        endpoint
            .connect_with_connector(sluice_api::tls::Connector::new(config))
            .await
    }

    /// `https://ADDR`.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("https://{}", self.addr)).expect("an endpoint")
    }

    /// A client without a workload certificate: what a proxy has before its first `Certify`.
    pub async fn client(&self) -> MeshClient<Channel> {
        MeshClient::new(
            self.channel(self.endpoint(), None)
                .await
                .expect("connect to the controller"),
        )
    }

    /// A certificate for `default/<service>`, from `Certify` with a bootstrap token.
    pub async fn certify(&self, service: &str) -> WorkloadCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .expect("csr");
        let issued = self
            .client()
            .await
            .certify(sluice_api::v1::CertifyRequest {
                workload: Some(sluice_api::v1::Workload {
                    namespace: "default".into(),
                    service: service.into(),
                    ..Default::default()
                }),
                csr_der: csr.der().to_vec(),
                token: token(&self.state, service),
            })
            .await
            .expect("Certify")
            .into_inner();
        WorkloadCert {
            chain: vec![CertificateDer::from(issued.certificate_der)],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A client presenting `cert`.
    pub async fn client_with(&self, cert: &WorkloadCert) -> MeshClient<Channel> {
        MeshClient::new(
            self.channel(self.endpoint(), Some(cert))
                .await
                .expect("connect to the controller"),
        )
    }

    /// A client presenting a fresh certificate for `default/<service>`, as that service's
    /// proxy.
    pub async fn client_as(&self, service: &str) -> MeshClient<Channel> {
        let cert = self.certify(service).await;
        self.client_with(&cert).await
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bootstrap token for `default/<service>` from `state`'s token key, as the local runner
/// mints it (`sluice identity token`).
pub fn token(state: &Path, service: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["identity", "token", "--service", service])
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run sluice identity token");
    assert!(
        out.status.success(),
        "sluice identity token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the policy copy");
    for entry in std::fs::read_dir(from).expect("read the example policy") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy a policy file");
        }
    }
}

/// A state directory and a copy of the shop's policy.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub state: PathBuf,
    pub policy: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let policy = dir.path().join("policy");
        copy_dir(&repo_root().join("examples/shop/policy"), &policy);
        Fixture {
            _dir: dir,
            state,
            policy,
        }
    }

    pub fn access(&self) -> PathBuf {
        self.policy.join("payments/access.yaml")
    }

    pub fn edit(&self, file: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(file).expect("read the policy file");
        assert!(text.contains(from), "{} has no {from:?}", file.display());
        // Written in place, as many editors do.
        std::fs::write(file, text.replacen(from, to, 1)).expect("write the policy file");
    }

    pub fn start(&self) -> Controller {
        std::fs::create_dir_all(&self.state).expect("state dir");
        let policy = self.policy.to_str().expect("a UTF-8 temp path");
        Controller::start(&self.state, &["--policy", policy, "--admin", "127.0.0.1:0"])
    }

    /// `sluice status --state-dir STATE [--format json]`: exit status and stdout.
    pub fn status(&self, json: bool) -> (i32, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("status").arg("--state-dir").arg(&self.state);
        if json {
            cmd.args(["--format", "json"]);
        }
        let out = cmd.output().expect("run sluice status");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn status_json(&self) -> Value {
        let (code, out) = self.status(true);
        assert_eq!(code, 0, "sluice status: {out}");
        serde_json::from_str(&out).expect("status is JSON")
    }

    /// Polls `sluice status` until `check` holds.
    pub async fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.status_json();
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; status: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
