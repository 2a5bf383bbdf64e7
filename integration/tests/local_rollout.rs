//! Rollouts in `sluice up`: the runner starts a canary beside the stable workload when a
//! rollout begins, and retires the stable one (promotion) or the canary (rollback) when it
//! ends; a version-only edit of the mesh file asks for a rollout.
//!
//! The controller's rollout engine is developed in parallel, so the rollout API is a
//! **stand-in** served by this test: it replays the documented JSON of `GET /rollouts`
//! (`{"rollouts":[{"id","namespace","service","baseline_version","canary_version","phase",…}]}`,
//! newest first) and answers `POST /rollouts` as documented (`201` with the rollout, `4xx`
//! with `{"error"}`). `sluice up` is pointed at it with `SLUICE_UP_ROLLOUT_API`. Everything
//! else is real: namespaces, sidecars, and the real controller, with which the canary's proxy
//! registers as the canary version.
//!
//! Two python http.server workloads stand in for checkout and catalog (as in `local_mesh.rs`).
//! Needs root, `ip`, `iptables-save`, `curl`, `setpriv` and python3; skips with a reason
//! otherwise.

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use sluice_integration::controller::sluice_bin;
use sluice_integration::local_mesh::{HostSnapshot, LocalMesh, SERIAL, output, skip_reason};
use sluice_integration::{have, skip};

fn skipped(test: &str) -> bool {
    let reason = skip_reason().or_else(|| (!have("python3")).then(|| "no python3".into()));
    if let Some(reason) = reason {
        skip(test, &reason);
        return true;
    }
    false
}

/// What the stand-in serves and what it was sent.
#[derive(Default)]
struct Api {
    /// `GET /rollouts`'s list, newest first.
    rollouts: Vec<Value>,
    /// Bodies of `POST /rollouts`.
    posts: Vec<Value>,
    /// Answer `503` to everything (the controller is down).
    down: bool,
}

/// The stand-in rollout API on 127.0.0.1 (see the module doc).
struct StandIn {
    api: Arc<Mutex<Api>>,
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn rollout(id: &str, service: &str, from: &str, to: &str, phase: &str) -> Value {
    // Fields the runner must ignore ride along, as the real engine's will.
    json!({
        "id": id, "namespace": "default", "service": service,
        "baseline_version": from, "canary_version": to, "phase": phase,
        "weight": 5, "step": 1, "started_at": "2026-11-24T10:00:00Z",
    })
}

impl StandIn {
    fn start(rollouts: Vec<Value>) -> StandIn {
        let api = Arc::new(Mutex::new(Api {
            rollouts,
            ..Api::default()
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the stand-in");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::clone(&api);
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let api = Arc::clone(&api);
                        async move { Ok::<_, Infallible>(answer(&api, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandIn { api, url, _rt: rt }
    }

    fn set(&self, rollouts: Vec<Value>) {
        self.api.lock().expect("stand-in").rollouts = rollouts;
    }

    fn set_down(&self, down: bool) {
        self.api.lock().expect("stand-in").down = down;
    }

    fn posts(&self) -> Vec<Value> {
        self.api.lock().expect("stand-in").posts.clone()
    }

    fn env(&self) -> [(&'static str, String); 1] {
        [("SLUICE_UP_ROLLOUT_API", self.url.clone())]
    }
}

async fn answer(api: &Mutex<Api>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if api.lock().expect("stand-in").down {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "stand-in down"}),
        );
    }
    if req.uri().path() != "/rollouts" {
        return reply(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    }
    match *req.method() {
        Method::GET => {
            let list = api.lock().expect("stand-in").rollouts.clone();
            reply(StatusCode::OK, json!({ "rollouts": list }))
        }
        Method::POST => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut api = api.lock().expect("stand-in");
            api.posts.push(body.clone());
            let (Some(service), Some(version)) =
                (body["service"].as_str(), body["version"].as_str())
            else {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "bad request"}));
            };
            if service != "catalog" {
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error": format!("{service} has no CanaryPolicy")}),
                );
            }
            let r = rollout("r-20261124-0001", service, "v1", version, "pending");
            // A newer rollout supersedes an active one; newest first.
            for old in &mut api.rollouts {
                if old["service"] == service {
                    old["phase"] = json!("superseded");
                }
            }
            api.rollouts.insert(0, r.clone());
            reply(StatusCode::CREATED, r)
        }
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "GET or POST"}),
        ),
    }
}

/// checkout and catalog (v1) under the shop's policy; catalog's v2 serves another directory
/// with an extra environment variable.
fn mesh_yaml(dir: &Path) -> String {
    for (www, body) in [("www", "a mug\n"), ("www-v2", "a mug, v2\n")] {
        let products = dir.join(www).join("v1/products");
        std::fs::create_dir_all(&products).expect("www");
        std::fs::write(products.join("mug"), body).expect("write");
    }
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
    format!(
        r#"policy: {}
workloads:
  - name: checkout
    service: checkout
    version: v1
    command: [python3, -m, http.server, "8080", --directory, www]
    port: 8080
  - name: catalog
    service: catalog
    version: v1
    command: [python3, -m, http.server, "8080", --directory, www]
    port: 8080
    env: {{ FLAVOUR: stable, KEPT: base }}
    versions:
      v2:
        command: [python3, -m, http.server, "8080", --directory, www-v2]
        env: {{ FLAVOUR: canary }}
"#,
        policy.canonicalize().expect("policy dir").display()
    )
}

fn start(api: &StandIn) -> LocalMesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = mesh_yaml(dir.path());
    LocalMesh::start_with_env(dir, &mesh, &api.env())
}

/// The environment of `pid`.
fn environ(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|e| String::from_utf8_lossy(&e).replace('\0', "\n"))
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The pid of `workload`'s proxy.
fn proxy_pid(mesh: &LocalMesh, workload: &str) -> Option<u32> {
    mesh.pids(workload).into_iter().find(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("sluice-proxy"))
    })
}

fn recorded(mesh: &LocalMesh, workload: &str) -> bool {
    mesh.record()["namespaces"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| *n == mesh.ns(workload)))
}

fn registered(mesh: &LocalMesh, instance: &str, version: &str) -> bool {
    mesh.status()["registrations"].as_array().is_some_and(|r| {
        r.iter()
            .any(|r| r["instance"] == instance && r["version"] == version)
    })
}

const WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_version_edit_starts_a_rollout_whose_canary_is_promoted() {
    if skipped("a_version_edit_starts_a_rollout_whose_canary_is_promoted") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    let api = StandIn::start(Vec::new());
    let mut mesh = start(&api);
    mesh.wait_for("catalog to register", WITHIN, |m| {
        registered(m, "catalog", "v1")
    });

    // A version-only edit asks for a rollout: POST /rollouts.
    let file = mesh.dir.path().join("mesh.yaml");
    let text = std::fs::read_to_string(&file).expect("mesh file");
    let edited = text.replacen(
        "name: catalog\n    service: catalog\n    version: v1",
        "name: catalog\n    service: catalog\n    version: v2",
        1,
    );
    assert_ne!(edited, text);
    let tmp = mesh.dir.path().join(".mesh.yaml.tmp");
    std::fs::write(&tmp, edited).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    mesh.wait_for("the POST", WITHIN, |_| !api.posts().is_empty());
    assert_eq!(
        api.posts(),
        [json!({"namespace": "default", "service": "catalog", "version": "v2"})]
    );
    mesh.wait_for("the answer in the log", WITHIN, |m| {
        m.log().contains(
            "mesh file: catalog v1→v2: the controller started rollout r-20261124-0001 (pending)",
        )
    });

    // Pending: the canary starts beside the stable workload, recorded before it is created.
    mesh.wait_for("the canary's namespace", WITHIN, |m| m.has_ns("catalog-v2"));
    assert!(mesh.has_ns("catalog"), "the stable one keeps running");
    assert!(recorded(&mesh, "catalog-v2"), "{}", mesh.record());
    mesh.wait_for("the canary's server", WITHIN, |m| {
        m.pid_of("catalog-v2", "www-v2").is_some()
    });
    assert!(
        std::fs::read_to_string(format!("/etc/netns/{}/hosts", mesh.ns("catalog-v2")))
            .expect("the canary's hosts")
            .contains("catalog")
    );
    let server = mesh.pid_of("catalog-v2", "www-v2").expect("canary server");
    let env = environ(server);
    assert!(env.contains("FLAVOUR=canary"), "the override's env: {env}");
    assert!(env.contains("KEPT=base"), "merged over the base env: {env}");
    assert!(
        mesh.pids("catalog-v2").len() >= 2,
        "its proxy and its server"
    );
    assert!(
        mesh.log().contains(
            "sluice up: rollout r-20261124-0001 catalog v1→v2: started canary catalog-v2 (10.213."
        ),
        "{}",
        mesh.log()
    );
    // Its proxy registered with the real controller, as the canary version.
    mesh.wait_for("the canary's registration as v2", WITHIN, |m| {
        registered(m, "catalog-v2", "v2")
    });
    assert!(registered(&mesh, "catalog", "v1"));

    // Progressing: nothing changes (no restart, no second canary).
    api.set(vec![rollout(
        "r-20261124-0001",
        "catalog",
        "v1",
        "v2",
        "progressing",
    )]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(mesh.pid_of("catalog-v2", "www-v2"), Some(server));
    assert_eq!(mesh.log().matches("started canary").count(), 1);

    // Promoted: the stable workload is retired; the canary keeps running and now carries the
    // service address.
    api.set(vec![rollout(
        "r-20261124-0001",
        "catalog",
        "v1",
        "v2",
        "promoted",
    )]);
    mesh.wait_for("the old catalog to be retired", WITHIN, |m| {
        !m.has_ns("catalog")
    });
    assert!(
        mesh.log().contains(
            "sluice up: rollout r-20261124-0001 catalog v1→v2: promoted: retired catalog"
        ),
        "{}",
        mesh.log()
    );
    assert!(!recorded(&mesh, "catalog"), "{}", mesh.record());
    assert!(!Path::new("/etc/netns").join(mesh.ns("catalog")).exists());
    assert_eq!(mesh.pid_of("catalog-v2", "www-v2"), Some(server));
    let addrs = output(&[
        "ip",
        "netns",
        "exec",
        &mesh.ns("catalog-v2"),
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    assert!(addrs.contains("/32"), "the service address moved: {addrs}");
    // The ingress dials the service address: the canary's sidecar answers (and, as for the
    // stable one, refuses the unauthenticated caller by catalog's policy).
    let answer = mesh.curl_ingress(
        "catalog.localhost",
        "/v1/products/mug",
        &["-H", "accept: text/plain"],
    );
    assert!(
        answer.contains("not allowed to call GET /v1/products/mug on catalog"),
        "{answer}"
    );

    mesh.signal("TERM");
    let status = mesh.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", mesh.log());
    assert!(mesh.log().contains("everything removed"), "{}", mesh.log());
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice up left something behind"
    );
}

#[test]
fn a_rolled_back_canary_is_removed_and_down_cleans_up_after_a_kill() {
    if skipped("a_rolled_back_canary_is_removed_and_down_cleans_up_after_a_kill") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = HostSnapshot::take();
    // Already progressing when `sluice up` starts; checkout's rollout names a version the mesh
    // file has no override for.
    let api = StandIn::start(vec![
        rollout("r-1", "catalog", "v1", "v2", "progressing"),
        rollout("r-0", "checkout", "v1", "v9", "progressing"),
    ]);
    let mut mesh = start(&api);
    mesh.wait_for("the canary, registered", WITHIN, |m| {
        m.pid_of("catalog-v2", "www-v2").is_some() && registered(m, "catalog-v2", "v2")
    });
    let server = mesh.pid_of("catalog-v2", "www-v2").expect("canary server");
    // The long-lived processes (a pyenv shim forks short-lived helpers too).
    let canary_pids = [
        server,
        proxy_pid(&mesh, "catalog-v2").expect("the canary's proxy"),
    ];
    let missing = "sluice up: rollout r-0 checkout v1→v9: checkout has no `versions.v9` in mesh.yaml; add one to run the canary locally";
    assert!(mesh.log().contains(missing), "{}", mesh.log());

    // The controller goes away for a while: the canary stays, the problem is logged once.
    api.set_down(true);
    mesh.wait_for("the outage in the log", WITHIN, |m| {
        m.log()
            .contains("answered 503 Service Unavailable: stand-in down")
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(mesh.log().matches("answered 503").count(), 1, "logged once");
    assert_eq!(mesh.pid_of("catalog-v2", "www-v2"), Some(server));
    assert!(canary_pids.iter().all(|p| alive(*p)), "nothing was stopped");
    api.set(vec![
        rollout("r-1", "catalog", "v1", "v2", "rolled-back"),
        rollout("r-0", "checkout", "v1", "v9", "aborted"),
    ]);
    api.set_down(false);

    // Rolled back: the canary's processes, namespace, veth and /etc/netns entry go.
    mesh.wait_for("the canary to be removed", WITHIN, |m| {
        !m.has_ns("catalog-v2")
    });
    assert!(
        mesh.log()
            .contains("sluice up: rollout r-1 catalog v1→v2: rolled back: removed catalog-v2"),
        "{}",
        mesh.log()
    );
    assert!(
        mesh.log()
            .contains("sluice up: the rollout API answers again")
    );
    assert!(canary_pids.iter().all(|p| !alive(*p)), "{canary_pids:?}");
    assert!(!recorded(&mesh, "catalog-v2"), "{}", mesh.record());
    assert!(!Path::new("/etc/netns").join(mesh.ns("catalog-v2")).exists());
    assert!(mesh.has_ns("catalog") && mesh.pid_of("catalog", "www").is_some());
    assert_eq!(mesh.log().matches(missing).count(), 1, "warned once");

    // A new rollout of the same version: a fresh canary (a new veth).
    api.set(vec![
        rollout("r-2", "catalog", "v1", "v2", "pending"),
        rollout("r-1", "catalog", "v1", "v2", "rolled-back"),
    ]);
    mesh.wait_for("the second canary", WITHIN, |m| {
        m.pid_of("catalog-v2", "www-v2").is_some()
    });
    let veths = mesh.record()["veths"].clone();
    assert_eq!(veths.as_array().map(Vec::len), Some(3), "{veths}");
    assert!(
        veths.as_array().is_some_and(|v| v
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.ends_with("v3")))),
        "a fresh index: {veths}"
    );

    // Killed with a canary running: `sluice down` removes it too (it is in up.json).
    mesh.signal("KILL");
    mesh.wait_exit(Duration::from_secs(10));
    let out = Command::new(sluice_bin())
        .args(["down", "--state-dir"])
        .arg(mesh.state())
        .output()
        .expect("sluice down");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        HostSnapshot::take(),
        before,
        "sluice down left something behind"
    );
}
