//! Transparent interception with real iptables rules, inside network namespaces this test
//! creates: a "pod" namespace running the proxy (as an unprivileged uid), an app and a
//! client, connected by a veth pair to a "peer" namespace running an upstream and a client.
//! Needs root, `ip`, `iptables`, `curl`, `python3` and `setpriv`; skips with a reason otherwise.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sluice_integration::netns::{Netns, run};
use sluice_integration::{Proxy, ProxyOptions, have, is_root, proxy_bin, skip};

const POD_IP: &str = "10.251.77.1";
const PEER_IP: &str = "10.251.77.2";
const PROXY_UID: &str = "2102";

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_server(ns: &Netns, ip: &str, port: u16, dir: &std::path::Path) -> KillOnDrop {
    let child = ns
        .command(&[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            ip,
        ])
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python http.server");
    KillOnDrop(child)
}

fn curl_ok(ns: &Netns, url: &str) -> Result<String, String> {
    let out = run(&mut ns.command(&["curl", "-sS", "--max-time", "5", url]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The nat rules as `iptables-save` prints them, without counters or comments lines.
fn nat_rules(ns: &Netns) -> String {
    let out = ns
        .run(&["iptables-save", "-t", "nat"])
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with(':'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn metric(ns: &Netns, admin: std::net::SocketAddr, needle: &[&str]) -> f64 {
    let text = curl_ok(ns, &format!("http://{admin}/metrics")).expect("metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("sluice_proxy_requests_total{") && needle.iter().all(|n| l.contains(n))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn iptables_interception_in_network_namespaces() {
    for tool in [
        "ip",
        "iptables",
        "iptables-save",
        "curl",
        "python3",
        "setpriv",
    ] {
        if !have(tool) {
            return skip("iptables_interception", &format!("`{tool}` not installed"));
        }
    }
    if !is_root() {
        return skip(
            "iptables_interception",
            "needs root (network namespaces, iptables)",
        );
    }
    let id = std::process::id();
    // As root with the tools installed, a namespace that cannot be made is a failure (a
    // broken kernel or container setup), never a reason to skip.
    let pod = Netns::create(&format!("sluice-pod-{id}"))
        .unwrap_or_else(|e| panic!("`ip netns add` failed as root: {e}"));
    let peer = Netns::create(&format!("sluice-peer-{id}")).expect("peer netns");
    let (vpod, vpeer) = (format!("sp{id}"), format!("sq{id}"));
    pod.run(&[
        "ip", "link", "add", &vpod, "type", "veth", "peer", "name", &vpeer, "netns", &peer.name,
    ])
    .expect("veth");
    pod.run(&["ip", "addr", "add", &format!("{POD_IP}/30"), "dev", &vpod])
        .expect("addr");
    peer.run(&["ip", "addr", "add", &format!("{PEER_IP}/30"), "dev", &vpeer])
        .expect("addr");
    pod.run(&["ip", "link", "set", &vpod, "up"]).expect("up");
    peer.run(&["ip", "link", "set", &vpeer, "up"]).expect("up");

    let www = tempfile::tempdir().expect("tempdir");
    std::fs::write(www.path().join("hello.txt"), "hello from upstream\n").expect("write");
    let _upstream = http_server(&peer, PEER_IP, 8080, www.path());
    let _app = http_server(&pod, POD_IP, 8081, www.path());
    wait_until("upstream", || {
        curl_ok(&pod, &format!("http://{PEER_IP}:8080/hello.txt")).is_ok()
    });
    wait_until("app", || {
        curl_ok(&peer, &format!("http://{POD_IP}:8081/hello.txt")).is_ok()
    });

    // The proxy runs as its own uid so that iptables can exempt its traffic.
    let mut wrapper = pod.prefix();
    wrapper.extend(
        [
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
        ]
        .map(String::from),
    );
    let proxy = Proxy::start(ProxyOptions {
        wrapper,
        shared_dir: true,
        ..ProxyOptions::default()
            .env("SLUICE_PROXY_INBOUND_ADDR", "0.0.0.0:0")
            .env("SLUICE_PROXY_SERVICE", "pod-app")
    });

    let before = nat_rules(&pod);
    let init = |extra: &[&str]| {
        let mut cmd = pod.command(&[]);
        cmd.arg(proxy_bin()).args([
            "init",
            "--proxy-uid",
            PROXY_UID,
            "--inbound-port",
            &proxy.inbound().port().to_string(),
            "--outbound-port",
            &proxy.outbound().port().to_string(),
            "--admin-port",
            &proxy.admin().port().to_string(),
        ]);
        cmd.args(extra);
        run(&mut cmd).expect("sluice-proxy init")
    };
    init(&[]);
    let installed = nat_rules(&pod);
    assert!(
        installed.contains("SLUICE_OUTBOUND") && installed.contains("--uid-owner 2102"),
        "{installed}"
    );
    init(&[]);
    assert_eq!(nat_rules(&pod), installed, "init is idempotent");

    // Outbound: the pod's client dials the peer directly; iptables sends it via the proxy.
    let body = curl_ok(&pod, &format!("http://{PEER_IP}:8080/hello.txt")).expect("outbound");
    assert_eq!(body, "hello from upstream\n");
    let outbound = metric(
        &pod,
        proxy.admin(),
        &[r#"direction="outbound""#, r#"src_service="pod-app""#],
    );
    assert!(
        outbound >= 1.0,
        "outbound request not seen by the proxy:\n{}",
        proxy.log()
    );

    // Inbound: the peer dials the pod's app; iptables sends it via the proxy.
    let body = curl_ok(&peer, &format!("http://{POD_IP}:8081/hello.txt")).expect("inbound");
    assert_eq!(body, "hello from upstream\n");
    let inbound = metric(
        &pod,
        proxy.admin(),
        &[r#"direction="inbound""#, r#"dst_service="pod-app""#],
    );
    assert!(
        inbound >= 1.0,
        "inbound request not seen by the proxy:\n{}",
        proxy.log()
    );

    // --skip-outbound-ports bypasses the proxy for that port.
    init(&["--skip-outbound-ports", "8080"]);
    let before_skip = metric(&pod, proxy.admin(), &[r#"direction="outbound""#]);
    curl_ok(&pod, &format!("http://{PEER_IP}:8080/hello.txt")).expect("direct");
    assert_eq!(
        metric(&pod, proxy.admin(), &[r#"direction="outbound""#]),
        before_skip
    );

    init(&["--remove"]);
    assert_eq!(
        nat_rules(&pod),
        before,
        "--remove restores the original rules"
    );
    init(&["--remove"]);
    drop(proxy);
}
