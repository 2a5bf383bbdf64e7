//! The portal end to end, against the real `sluice controller --portal`: the access-request
//! form, immediate grants (plain directory and git), the review path, bad input on every field,
//! CSRF, trusted-proxy users, escaping, and the team messages.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Controller, repo_root};

// ---- a tiny HTTP/1.1 client (Connection: close) ----

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect to the portal");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or_default());
    stream.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the reply");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete reply");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A user as the authenticating proxy names them.
#[derive(Clone, Copy)]
struct As<'a>(&'a str, Option<&'a str>);

const ERNIE: As<'static> = As("ernie", Some("ernie@shop.example"));
const PAT: As<'static> = As("pat", Some("pat@shop.example"));

impl As<'_> {
    fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![("X-Forwarded-User", self.0)];
        if let Some(e) = self.1 {
            h.push(("X-Forwarded-Email", e));
        }
        h
    }
}

fn get(addr: SocketAddr, user: As<'_>, path: &str) -> Reply {
    http(addr, "GET", path, &user.headers(), None)
}

fn post(addr: SocketAddr, user: As<'_>, path: &str, fields: &[(&str, &str)]) -> Reply {
    http(addr, "POST", path, &user.headers(), Some(&form(fields)))
}

fn csrf(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    let end = page[start..].find('"').expect("end of the token");
    page[start..start + end].to_owned()
}

// ---- a webhook receiver ----

#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(String, String)>>>);

impl Inbox {
    fn start() -> (Inbox, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the inbox");
        let addr = listener.local_addr().expect("addr");
        let inbox = Inbox::default();
        let store = inbox.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let store = store.clone();
                std::thread::spawn(move || store.serve(stream));
            }
        });
        (inbox, addr)
    }

    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            self.0
                .lock()
                .expect("lock")
                .push((path, String::from_utf8_lossy(&body).into_owned()));
            let mut w = &stream;
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    }

    /// Waits for a message to `path` whose body contains every one of `needles`.
    fn wait_for(&self, path: &str, needles: &[&str]) -> String {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .0
                .lock()
                .expect("lock")
                .iter()
                .find(|(p, b)| p == path && needles.iter().all(|n| b.contains(n)))
                .map(|(_, b)| b.clone());
            if let Some(body) = found {
                return body;
            }
            assert!(
                Instant::now() < until,
                "no message to {path} with {needles:?}; got {:?}",
                self.0.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

// ---- the controller with a copy of the shop's policy ----

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

struct Mesh {
    _dir: tempfile::TempDir,
    policy: PathBuf,
    state: PathBuf,
    controller: Controller,
    portal: SocketAddr,
    inbox: Inbox,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The shop's policy (team channels pointed at a test inbox), in a git repository if `git`,
/// served with users from the trusted-proxy header (the test connects from 127.0.0.1).
fn mesh(with_git: bool, trusted: &str) -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    copy_dir(&repo_root().join("examples/shop/policy"), &policy);
    let (inbox, inbox_addr) = Inbox::start();
    let teams = policy.join("teams.yaml");
    let text = std::fs::read_to_string(&teams).expect("teams.yaml");
    std::fs::write(
        &teams,
        text.replace("http://localhost:7072", &format!("http://{inbox_addr}")),
    )
    .expect("write teams.yaml");
    if with_git {
        git(&policy, &["init", "-q", "-b", "main"]);
        git(&policy, &["config", "user.name", "Test"]);
        git(&policy, &["config", "user.email", "test@example.invalid"]);
        git(&policy, &["add", "."]);
        git(&policy, &["commit", "-q", "-m", "the shop's policy"]);
    }
    let state = dir.path().join("state");
    let controller = Controller::start(
        &state,
        &[
            "--policy",
            policy.to_str().expect("utf-8 path"),
            "--portal",
            "127.0.0.1:0",
            "--portal-trusted-proxy",
            trusted,
        ],
    );
    let portal = std::fs::read_to_string(state.join("portal.addr"))
        .expect("portal.addr")
        .trim()
        .parse()
        .expect("an address");
    Mesh {
        _dir: dir,
        policy,
        state,
        controller,
        portal,
        inbox,
    }
}

impl Mesh {
    fn snapshot_version(&self) -> String {
        let admin: SocketAddr = std::fs::read_to_string(self.state.join("admin.addr"))
            .expect("admin.addr")
            .trim()
            .parse()
            .expect("address");
        let reply = http(admin, "GET", "/status", &[], None);
        let json: serde_json::Value = serde_json::from_str(&reply.body).expect("status JSON");
        json["snapshot"]["version"]
            .as_str()
            .expect("a version")
            .to_owned()
    }

    /// Opens the form as `user` from a denial link and submits it with `fields` added.
    fn request(&self, user: As<'_>, link: &str, fields: &[(&str, &str)]) -> Reply {
        let page = get(self.portal, user, link);
        assert_eq!(page.status, 200, "{}", page.body);
        let token = csrf(&page.body);
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        post(self.portal, user, "/access", &all)
    }

    fn log(&self) -> String {
        self.controller.log()
    }
}

fn location(reply: &Reply) -> String {
    assert_eq!(reply.status, 303, "{}", reply.body);
    reply.headers.get("location").cloned().expect("a Location")
}

const CATALOG_LINK: &str =
    "/access/new?from=checkout&to=catalog&rpc=GET%20%2Fv1%2Fproducts&env=stable";
const PAYMENTS_LINK: &str =
    "/access/new?from=checkout&to=payments&rpc=POST%20%2Fv1%2Frefunds&env=stable";

fn catalog_fields(reason: &str) -> Vec<(&str, &str)> {
    vec![
        ("from", "checkout"),
        ("to", "catalog"),
        ("env", "stable"),
        ("rpc", "GET /v1/products"),
        ("reason", reason),
        ("ephemeral", "shared"),
    ]
}

fn payments_fields(reason: &str) -> Vec<(&str, &str)> {
    vec![
        ("from", "checkout"),
        ("to", "payments"),
        ("env", "stable"),
        ("rpc", "POST /v1/refunds"),
        ("reason", reason),
        ("ephemeral", "shared"),
    ]
}

#[test]
fn an_open_callee_is_granted_at_once_and_the_controller_applies_it() {
    let m = mesh(false, "127.0.0.1");
    let form = get(m.portal, ERNIE, CATALOG_LINK);
    assert_eq!(form.status, 200);
    assert!(
        form.body.contains(
            "Submitting grants access at once: catalog is open and storefront lets its services \
             get access without review."
        ),
        "{}",
        form.body
    );
    assert!(form.body.contains("value=\"GET /v1/products\" checked"));
    assert!(form.body.contains("value=\"GET /v1/products/{id}\">"));
    assert!(form.body.contains("name=\"select\" value=\"all\""));
    assert!(form.body.contains("value=\"shared\" checked"));

    // "Select all" re-renders the form with every declared endpoint ticked.
    let token = csrf(&form.body);
    let mut fields = catalog_fields("");
    fields.push(("csrf", &token));
    fields.push(("select", "all"));
    let all = post(m.portal, ERNIE, "/access", &fields);
    assert_eq!(all.status, 200);
    assert!(all.body.contains("value=\"GET /metrics\" checked"));

    let before = m.snapshot_version();
    let reply = m.request(
        ERNIE,
        CATALOG_LINK,
        &catalog_fields("Checkout lists products"),
    );
    let page = get(m.portal, ERNIE, &location(&reply));
    assert!(page.body.contains(">granted<"), "{}", page.body);
    assert!(page.body.contains("+++ b/grants/checkout-to-catalog.yaml"));
    let file = m.policy.join("grants/checkout-to-catalog.yaml");
    let text = std::fs::read_to_string(&file).expect("the grant file");
    assert!(text.contains("\"Checkout lists products\""), "{text}");
    sluice_policy::PolicySet::load(&m.policy).expect("the policy with the grant validates");
    let until = Instant::now() + Duration::from_secs(5);
    while m.snapshot_version() == before {
        assert!(Instant::now() < until, "no new snapshot; log:\n{}", m.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    m.inbox.wait_for(
        "/slack/storefront",
        &[
            "access.granted",
            "checkout",
            "GET /v1/products",
            "Checkout lists products",
            "ernie",
        ],
    );

    // A second grant for the same pair gets its own file; what users type is escaped.
    let reply = m.request(
        ERNIE,
        CATALOG_LINK,
        &catalog_fields("<script>alert(1)</script>"),
    );
    let page = get(m.portal, ERNIE, &location(&reply));
    assert!(m.policy.join("grants/checkout-to-catalog-2.yaml").exists());
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.body.contains("<script>"));
    let list = get(m.portal, ERNIE, "/access");
    assert!(list.body.contains("Audit log"));
    assert_eq!(
        list.body.matches(">granted</td>").count(),
        2,
        "{}",
        list.body
    );
}

#[test]
fn in_git_grants_are_committed_and_reviews_are_branches() {
    let m = mesh(true, "127.0.0.1");
    let head = git(&m.policy, &["rev-parse", "HEAD"]);
    let reply = m.request(
        ERNIE,
        CATALOG_LINK,
        &catalog_fields("Checkout lists products"),
    );
    location(&reply);
    let message = git(&m.policy, &["log", "-1", "--format=%B"]);
    assert!(
        message.contains("Grant checkout access to catalog: GET /v1/products"),
        "{message}"
    );
    assert!(
        message.contains("Requested by ernie <ernie@shop.example>"),
        "{message}"
    );
    assert!(
        message.contains("Why: Checkout lists products"),
        "{message}"
    );
    assert_eq!(git(&m.policy, &["log", "-1", "--format=%an"]), "ernie");
    assert_eq!(git(&m.policy, &["status", "--porcelain"]), "");
    assert_ne!(git(&m.policy, &["rev-parse", "HEAD"]), head);

    // The review path: a branch with the file; HEAD, index and working tree untouched.
    let head = git(&m.policy, &["rev-parse", "HEAD"]);
    let reply = m.request(ERNIE, PAYMENTS_LINK, &payments_fields("refunds"));
    let path = location(&reply);
    let id = path.rsplit('/').next().expect("an id").to_owned();
    let branch = format!("sluice/access-{id}");
    let draft = git(
        &m.policy,
        &[
            "show",
            &format!("{branch}:grants/checkout-to-payments.yaml"),
        ],
    );
    assert!(draft.contains("POST /v1/refunds"), "{draft}");
    assert_eq!(git(&m.policy, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(&m.policy, &["status", "--porcelain"]), "");
    assert!(!m.policy.join("grants/checkout-to-payments.yaml").exists());
    let page = get(m.portal, PAT, &path);
    assert!(page.body.contains(&branch), "{}", page.body);

    // Approval commits on the current branch and removes the review branch.
    let token = csrf(&page.body);
    let reply = post(
        m.portal,
        PAT,
        &format!("{path}/approve"),
        &[("csrf", &token), ("comment", "ok")],
    );
    location(&reply);
    assert!(m.policy.join("grants/checkout-to-payments.yaml").exists());
    let message = git(&m.policy, &["log", "-1", "--format=%B"]);
    assert!(message.contains("Approved by pat: ok"), "{message}");
    assert_eq!(git(&m.policy, &["status", "--porcelain"]), "");
    assert_eq!(git(&m.policy, &["branch", "--list", &branch]), "");
}

#[test]
fn a_restricted_callee_is_reviewed_by_its_team() {
    let m = mesh(false, "127.0.0.1");
    let form = get(m.portal, ERNIE, PAYMENTS_LINK);
    assert!(
        form.body
            .contains("Submitting sends a request to team payments: payments is restricted."),
        "{}",
        form.body
    );
    let reply = m.request(
        ERNIE,
        PAYMENTS_LINK,
        &payments_fields("Refund cancelled orders"),
    );
    let path = location(&reply);
    let page = get(m.portal, ERNIE, &path);
    assert!(page.body.contains(">pending<"), "{}", page.body);
    assert!(
        page.body
            .contains("Only members of team payments can approve or reject")
    );
    assert!(
        page.body
            .contains("+      allow: [&quot;POST /v1/refunds&quot;]"),
        "{}",
        page.body
    );
    assert!(!m.policy.join("grants/checkout-to-payments.yaml").exists());
    m.inbox.wait_for(
        "/slack/payments",
        &[
            "access.requested",
            "POST /v1/refunds",
            "Refund cancelled orders",
        ],
    );
    m.inbox
        .wait_for("/webhook/payments", &["access.requested", "ernie"]);

    // A non-member cannot approve, even with a valid token of their own.
    let token = csrf(&get(m.portal, ERNIE, PAYMENTS_LINK).body);
    let refused = post(
        m.portal,
        ERNIE,
        &format!("{path}/approve"),
        &[("csrf", &token)],
    );
    assert_eq!(refused.status, 403);
    assert!(
        refused
            .body
            .contains("Only members of team payments can approve or reject")
    );
    assert!(!m.policy.join("grants/checkout-to-payments.yaml").exists());

    // A member approves.
    let page = get(m.portal, PAT, &path);
    assert!(page.body.contains(">Approve<"), "{}", page.body);
    let token = csrf(&page.body);
    location(&post(
        m.portal,
        PAT,
        &format!("{path}/approve"),
        &[("csrf", &token), ("comment", "fine for refunds")],
    ));
    let page = get(m.portal, ERNIE, &path);
    assert!(page.body.contains(">approved<"), "{}", page.body);
    let file = m.policy.join("grants/checkout-to-payments.yaml");
    assert!(
        std::fs::read_to_string(&file)
            .expect("grant")
            .contains("POST /v1/refunds")
    );
    sluice_policy::PolicySet::load(&m.policy).expect("valid with the approved grant");
    m.inbox.wait_for(
        "/slack/storefront",
        &["access.approved", "pat", "fine for refunds"],
    );
    m.inbox.wait_for("/slack/payments", &["access.approved"]);

    // Approving twice is refused.
    let again = post(
        m.portal,
        PAT,
        &format!("{path}/approve"),
        &[("csrf", &token)],
    );
    assert_eq!(again.status, 409);

    // A second request, rejected with a comment: the requester's team hears why.
    let reply = m.request(
        ERNIE,
        "/access/new?from=checkout&to=payments&rpc=payments.v1.Payments%2FRefund",
        &[
            ("from", "checkout"),
            ("to", "payments"),
            ("rpc", "payments.v1.Payments/Refund"),
            ("ephemeral", "copy"),
        ],
    );
    let path = location(&reply);
    let token = csrf(&get(m.portal, PAT, &path).body);
    location(&post(
        m.portal,
        PAT,
        &format!("{path}/reject"),
        &[("csrf", &token), ("comment", "use the HTTP refunds API")],
    ));
    let page = get(m.portal, ERNIE, &path);
    assert!(page.body.contains(">rejected<"), "{}", page.body);
    assert!(page.body.contains("use the HTTP refunds API"));
    assert!(!m.policy.join("grants/checkout-to-payments-2.yaml").exists());
    m.inbox.wait_for(
        "/slack/storefront",
        &["access.rejected", "use the HTTP refunds API"],
    );
    let rejected_to_payments = m
        .inbox
        .0
        .lock()
        .expect("lock")
        .iter()
        .any(|(p, b)| p.contains("payments") && b.contains("access.rejected"));
    assert!(!rejected_to_payments, "{:?}", m.inbox.paths());
    let list = get(m.portal, ERNIE, "/access");
    for action in ["requested", "approved", "rejected"] {
        assert!(
            list.body.contains(&format!("<td>{action}</td>")),
            "{action}: {}",
            list.body
        );
    }
}

#[test]
fn bad_input_is_refused_on_the_form_with_everything_typed_kept() {
    let m = mesh(false, "127.0.0.1");
    let token = csrf(&get(m.portal, ERNIE, CATALOG_LINK).body);
    let long = "x".repeat(5000);
    // (changed fields, the message, what must still be on the form)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("from", "chekout")],
            "`chekout` is not a declared service. Did you mean checkout?",
            "value=\"chekout\"",
        ),
        (
            vec![("to", "nowhere")],
            "The callee `nowhere` is not a declared service.",
            "value=\"nowhere\"",
        ),
        (
            vec![("rpc", "fetch things")],
            "`fetch things` is not an endpoint",
            "value=\"fetch things\" checked",
        ),
        (
            vec![("rpc", "GET /v1/secrets")],
            "catalog does not declare `GET /v1/secrets`",
            "value=\"GET /v1/secrets\" checked",
        ),
        (
            vec![("rpc", "")],
            "Tick at least one endpoint.",
            "value=\"checkout\"",
        ),
        (
            vec![("ephemeral", "sometimes")],
            "`sometimes` is not an ephemeral-environment mode",
            "<code>sometimes</code>",
        ),
        (
            vec![("env", "pr 42")],
            "`pr 42` is not an environment name",
            "value=\"pr 42\"",
        ),
        (
            vec![("reason", &long)],
            "The reason is too long (5000 bytes; at most 4096).",
            &long,
        ),
    ];
    for (changes, message, kept) in cases {
        let mut fields: Vec<(&str, &str)> = catalog_fields("my reason")
            .into_iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .collect();
        fields.extend(changes.iter().copied());
        fields.push(("csrf", &token));
        let reply = post(m.portal, ERNIE, "/access", &fields);
        assert_eq!(reply.status, 400, "{message}: {}", reply.body);
        assert!(reply.body.contains(message), "{message}: {}", reply.body);
        assert!(reply.body.contains(kept), "{kept} lost: {}", reply.body);
        if !changes.iter().any(|(k, _)| *k == "reason") {
            assert!(
                reply.body.contains(">my reason</textarea>"),
                "{}",
                reply.body
            );
        }
    }
    assert!(!m.policy.join("grants").exists());
    // Bodies are bounded.
    let huge = "a".repeat(70 * 1024);
    let reply = post(
        m.portal,
        ERNIE,
        "/access",
        &[("csrf", &token), ("reason", &huge)],
    );
    assert_eq!(reply.status, 413);
}

#[test]
fn forms_without_a_valid_token_or_from_another_site_are_refused() {
    let m = mesh(false, "127.0.0.1");
    let token = csrf(&get(m.portal, ERNIE, CATALOG_LINK).body);
    let pat_token = csrf(&get(m.portal, PAT, CATALOG_LINK).body);
    let fields = catalog_fields("x");
    let with = |t: &'static str| -> Vec<(&str, &str)> {
        let mut f = fields.clone();
        f.push(("csrf", t));
        f
    };
    assert_eq!(post(m.portal, ERNIE, "/access", &fields).status, 403);
    assert_eq!(post(m.portal, ERNIE, "/access", &with("00ff")).status, 403);
    let mut f = fields.clone();
    f.push(("csrf", &pat_token));
    let reply = post(m.portal, ERNIE, "/access", &f);
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("security token"), "{}", reply.body);
    let mut f = fields.clone();
    f.push(("csrf", &token));
    let body = form(&f);
    let mut headers = ERNIE.headers();
    headers.push(("Origin", "http://evil.example"));
    let reply = http(m.portal, "POST", "/access", &headers, Some(&body));
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("another site"), "{}", reply.body);
    assert!(!m.policy.join("grants").exists());
    let origin = format!("http://{}", m.portal);
    let mut headers = ERNIE.headers();
    headers.push(("Origin", &origin));
    let reply = http(m.portal, "POST", "/access", &headers, Some(&body));
    assert_eq!(reply.status, 303, "{}", reply.body);
}

#[test]
fn users_come_from_trusted_proxies_only() {
    // Trusted: the header names the user.
    let m = mesh(false, "127.0.0.1");
    let page = get(m.portal, As("Ernie <b>", None), "/access");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<span class=\"user\">Ernie &lt;b&gt;</span>")
    );
    let none = http(m.portal, "GET", "/access", &[], None);
    assert_eq!(none.status, 403);
    assert!(none.body.contains("X-Forwarded-User"), "{}", none.body);
    assert_eq!(
        http(m.portal, "GET", "/", &ERNIE.headers(), None).status,
        303
    );
    drop(m);

    // Not trusted: the same header from 127.0.0.1 is refused.
    let m = mesh(false, "127.0.0.2");
    let page = get(m.portal, ERNIE, "/access");
    assert_eq!(page.status, 403);
    assert!(page.body.contains("not a trusted proxy"), "{}", page.body);
}

#[test]
fn the_portal_refuses_to_start_without_safe_authentication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("controller")
            .arg("--state-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .output()
            .expect("run sluice controller")
    };
    let out = run(&["--portal", "0.0.0.0:0", "--portal-dev-user", "ernie"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must listen on loopback"));
    let out = run(&["--portal", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--portal-dev-user"));
}

#[test]
fn dev_mode_makes_every_request_the_dev_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let _c = Controller::start(
        &state,
        &[
            "--portal",
            "127.0.0.1:0",
            "--portal-dev-user",
            "pat@shop.example",
        ],
    );
    let portal: SocketAddr = std::fs::read_to_string(state.join("portal.addr"))
        .expect("portal.addr")
        .trim()
        .parse()
        .expect("address");
    let page = http(portal, "GET", "/access", &[], None);
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<span class=\"user\">pat@shop.example</span>")
    );
}

/// Dev mode on one machine: ask as the dev user, then act as a payments member and approve.
#[test]
fn in_dev_mode_one_person_can_request_then_approve_as_a_team_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    copy_dir(&repo_root().join("examples/shop/policy"), &policy);
    let state = dir.path().join("state");
    let _c = Controller::start(
        &state,
        &[
            "--policy",
            policy.to_str().expect("utf-8 path"),
            "--portal",
            "127.0.0.1:0",
            "--portal-dev-user",
            "ernie",
        ],
    );
    let portal: SocketAddr = std::fs::read_to_string(state.join("portal.addr"))
        .expect("portal.addr")
        .trim()
        .parse()
        .expect("address");
    let form_page = http(
        portal,
        "GET",
        "/access/new?from=checkout&to=payments&rpc=POST%20%2Fv1%2Frefunds&env=stable",
        &[],
        None,
    );
    let mut fields = vec![("csrf".to_owned(), csrf(&form_page.body))];
    fields.extend(
        payments_fields("refunds for cancelled orders")
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let created = http(portal, "POST", "/access", &[], Some(&body));
    let request = location(&created);
    let page = http(portal, "GET", &request, &[], None);
    assert!(page.body.contains("pending"), "{}", page.body);
    assert!(page.body.contains("act as one of them"), "{}", page.body);

    // Act as Pat Payments: the cookie carries the choice, the CSRF token is ernie's.
    let chooser = http(portal, "GET", "/dev/act-as", &[], None);
    assert!(
        chooser.body.contains("Act as Pat Payments"),
        "{}",
        chooser.body
    );
    let switched = http(
        portal,
        "POST",
        "/dev/act-as",
        &[],
        Some(&form(&[
            ("csrf", &csrf(&chooser.body)),
            ("user", "Pat Payments"),
        ])),
    );
    assert_eq!(switched.status, 303, "{}", switched.body);
    let cookie = switched
        .headers
        .get("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("the act-as cookie")
        .to_owned();
    let as_pat = [("Cookie", cookie.as_str())];
    let page = http(portal, "GET", &request, &as_pat, None);
    assert!(
        page.body
            .contains("<span class=\"user\">Pat Payments</span>"),
        "{}",
        page.body
    );
    let approved = http(
        portal,
        "POST",
        &format!("{request}/approve"),
        &as_pat,
        Some(&form(&[("csrf", &csrf(&page.body)), ("comment", "ok")])),
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let page = http(portal, "GET", &request, &as_pat, None);
    assert!(page.body.contains("approved"), "{}", page.body);
    assert!(policy.join("grants/checkout-to-payments.yaml").is_file());
}

// ---- issue 11's portal attacks: each failed on the hand-routed portal ----

/// `http`, but with the `Host` header the test chooses (a DNS-rebinding page's browser sends
/// the attacker's name; the address it connects to is the portal's).
fn http_host(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect to the portal");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the reply");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete reply");
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Reply {
        status,
        headers: HashMap::new(),
        body: body.to_owned(),
    }
}

/// A controller with the shop's policy and a portal started with `flags`.
fn portal_with(flags: &[&str]) -> (tempfile::TempDir, PathBuf, Controller, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    copy_dir(&repo_root().join("examples/shop/policy"), &policy);
    let state = dir.path().join("state");
    let mut args = vec![
        "--policy",
        policy.to_str().expect("utf-8 path"),
        "--portal",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(flags);
    let controller = Controller::start(&state, &args);
    let portal = std::fs::read_to_string(state.join("portal.addr"))
        .expect("portal.addr")
        .trim()
        .parse()
        .expect("an address");
    (dir, policy, controller, portal)
}

/// Pat is in team payments: Pat may review other people's requests to payments, never their
/// own, under any of the names that identify them.
#[test]
fn the_requester_can_never_approve_their_own_request() {
    let m = mesh(false, "127.0.0.1");
    let reply = m.request(PAT, PAYMENTS_LINK, &payments_fields("refunds, says pat"));
    let path = location(&reply);
    let page = get(m.portal, PAT, &path);
    assert!(page.body.contains(">pending<"), "{}", page.body);
    assert!(!page.body.contains(">Approve<"), "{}", page.body);
    assert!(
        page.body
            .contains("You asked for this access: another member of team payments decides"),
        "{}",
        page.body
    );
    // The same person under each of their names: user name, email as the name, member name.
    for who in [
        PAT,
        As("PAT@shop.example", None),
        As("Pat Payments", None),
        As("pat", Some("pat@shop.example")),
    ] {
        let token = csrf(&get(m.portal, who, PAYMENTS_LINK).body);
        let refused = post(
            m.portal,
            who,
            &format!("{path}/approve"),
            &[("csrf", &token)],
        );
        assert_eq!(refused.status, 403, "{}: {}", who.0, refused.body);
        assert!(
            refused
                .body
                .contains("You asked for this access: another member of team payments decides"),
            "{}",
            refused.body
        );
    }
    assert!(!m.policy.join("grants/checkout-to-payments.yaml").exists());
    // Another member approves.
    let sam = As("sam", Some("sam@shop.example"));
    let page = get(m.portal, sam, &path);
    let token = csrf(&page.body);
    location(&post(
        m.portal,
        sam,
        &format!("{path}/approve"),
        &[("csrf", &token), ("comment", "ok")],
    ));
    assert!(m.policy.join("grants/checkout-to-payments.yaml").exists());
}

/// In dev mode one person plays every part on purpose, but as one identity at a time: the dev
/// user who asked cannot approve as themselves, only by acting as another member.
#[test]
fn in_dev_mode_the_requester_must_act_as_someone_else_to_approve() {
    let (_dir, policy, _c, portal) = portal_with(&["--portal-dev-user", "pat@shop.example"]);
    let form_page = http(portal, "GET", PAYMENTS_LINK, &[], None);
    let token = csrf(&form_page.body);
    let mut fields = vec![("csrf", token.clone())];
    fields.extend(
        payments_fields("refunds")
            .into_iter()
            .map(|(k, v)| (k, v.to_owned())),
    );
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let request = location(&http(portal, "POST", "/access", &[], Some(&body)));
    let page = http(portal, "GET", &request, &[], None);
    assert!(page.body.contains("act as one of them"), "{}", page.body);
    assert!(!page.body.contains(">Approve<"), "{}", page.body);
    let refused = http(
        portal,
        "POST",
        &format!("{request}/approve"),
        &[],
        Some(&form(&[("csrf", &token)])),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(!policy.join("grants/checkout-to-payments.yaml").exists());
    let as_sam = [("Cookie", "sluice_dev_act_as=Sam%20Security")];
    let page = http(portal, "GET", &request, &as_sam, None);
    let approved = http(
        portal,
        "POST",
        &format!("{request}/approve"),
        &as_sam,
        Some(&form(&[("csrf", &csrf(&page.body))])),
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    assert!(policy.join("grants/checkout-to-payments.yaml").is_file());
}

/// Team storefront lets *its* services get access without review; someone outside the team
/// (in no team, or in another) cannot use that to grant access in its name.
#[test]
fn an_immediate_grant_needs_a_member_of_the_callers_team() {
    let m = mesh(false, "127.0.0.1");
    let mallory = As("mallory", Some("mallory@elsewhere.example"));
    for who in [mallory, PAT] {
        let form = get(m.portal, who, CATALOG_LINK);
        assert!(
            form.body.contains(&format!(
                "Submitting sends a request to team storefront: {} is not a member of team \
                 storefront, which owns checkout.",
                who.0
            )),
            "{}",
            form.body
        );
    }
    let reply = m.request(mallory, CATALOG_LINK, &catalog_fields("let me in"));
    let page = get(m.portal, mallory, &location(&reply));
    assert!(page.body.contains(">pending<"), "{}", page.body);
    assert!(!m.policy.join("grants/checkout-to-catalog.yaml").exists());
    // A member of storefront (Tina) reviews it.
    let tina = As("tina", Some("tina@shop.example"));
    let path = location(&reply);
    let token = csrf(&get(m.portal, tina, &path).body);
    location(&post(
        m.portal,
        tina,
        &format!("{path}/approve"),
        &[("csrf", &token)],
    ));
    assert!(m.policy.join("grants/checkout-to-catalog.yaml").exists());
}

/// A DNS-rebinding page makes the victim's browser send the attacker's host name to the
/// portal's address: only the configured names are served.
#[test]
fn only_configured_host_names_are_served() {
    // Trusted-proxy mode: the `--portal-url` host only.
    let (_dir, _policy, _c, portal) = portal_with(&[
        "--portal-trusted-proxy",
        "127.0.0.1",
        "--portal-url",
        "https://mesh.example.com",
    ]);
    let user = [("X-Forwarded-User", "ernie")];
    let ok = http_host(portal, "mesh.example.com", "/access", &user);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        http_host(portal, "MESH.example.com:443", "/access", &user).status,
        200
    );
    for host in [
        "evil.example",
        "evil.example:7070",
        "localhost",
        &portal.to_string(),
        "mesh.example.com.evil.example",
        "mesh.example.com:8443",
    ] {
        let refused = http_host(portal, host, "/access", &user);
        assert_eq!(refused.status, 421, "{host}: {}", refused.body);
        assert!(
            refused
                .body
                .contains("This portal answers to mesh.example.com only"),
            "{host}: {}",
            refused.body
        );
        assert!(!refused.body.contains("Audit log"), "{}", refused.body);
    }
    // Health checks are answered whatever the name (they show nothing).
    assert_eq!(
        http_host(portal, "10.1.2.3:7070", "/healthz", &[]).body,
        "ok\n"
    );
    drop(_c);

    // Dev mode: loopback names too, but still not the attacker's.
    let (_dir, _policy, _c, portal) = portal_with(&["--portal-dev-user", "ernie"]);
    let port = portal.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let ok = http_host(portal, &host, "/access", &[]);
        assert_eq!(ok.status, 200, "{host}: {}", ok.body);
    }
    for host in ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io"] {
        let refused = http_host(portal, host, "/access", &[]);
        assert_eq!(refused.status, 421, "{host}: {}", refused.body);
        assert!(refused.body.contains("DNS rebinding"), "{}", refused.body);
    }
}
