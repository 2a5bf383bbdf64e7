//! `sluice inject` offline, as a user runs it: the shop's manifests against golden files, and
//! every workload kind, injected in native and in classic mode, validated strictly against the
//! Kubernetes 1.29 and 1.33 schemas (`kubernetes-validate`, which `scripts/lib.sh` installs;
//! skipped with a message where it is missing). What a real API server accepts is proved
//! against v1.20 in `integration/tests/kubernetes_inject.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `sluice ARGS…` in-process: (exit code, stdout, stderr).
fn sluice(args: &[&str]) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = sluice_controller::run(
        std::iter::once("sluice").chain(args.iter().copied()),
        sluice_controller::Terminal::default(),
        &mut out,
        &mut err,
    );
    (
        code,
        String::from_utf8(out).expect("utf8"),
        String::from_utf8(err).expect("utf8"),
    )
}

#[test]
fn the_shops_manifests_match_the_golden_files() {
    // Relative paths, so the summaries in the golden files do not depend on the checkout.
    std::env::set_current_dir(repo("")).expect("cd");
    for mode in ["native", "classic"] {
        let (code, out, err) = sluice(&["inject", "--mode", mode, "examples/shop/k8s"]);
        assert_eq!(code, 0, "{err}");
        let golden = repo(&format!("controller/tests/golden/shop-{mode}.yaml"));
        let text = format!(
            "# `sluice inject --mode {mode} examples/shop/k8s`; its summary on stderr was:\n{}{out}",
            err.lines()
                .map(|l| format!("#   {l}\n"))
                .collect::<String>()
        );
        if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &text).expect("write golden");
        }
        let want = std::fs::read_to_string(&golden).expect("golden file");
        assert!(
            text == want,
            "`sluice inject --mode {mode}` differs from {}; if the change is intended, run \
             SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-controller --test inject\n{text}",
            golden.display()
        );
        // Every workload injected, the Services passed through untouched.
        for line in [
            "deployment/payments: injected",
            "job/refund-ch-1: injected",
            "cronjob/nightly-refunds: injected",
            "service/payments: passed through (not a workload)",
        ] {
            assert!(err.contains(line), "{line}: {err}");
        }
        assert!(!err.contains("warning"), "{err}");
        // Idempotent: injecting the output again changes nothing.
        let dir = tempfile::tempdir().expect("tempdir");
        let once = dir.path().join("once.yaml");
        std::fs::write(&once, &out).expect("write");
        let (_, again, err) = sluice(&["inject", "--mode", mode, once.to_str().expect("path")]);
        assert_eq!(again, out, "injecting twice differs from once");
        assert!(
            err.contains("deployment/payments: already injected"),
            "{err}"
        );
        // And uninject gives back the original manifests' data.
        let (_, back, _) = sluice(&["uninject", once.to_str().expect("path")]);
        let original: String = ["catalog", "checkout", "frontend", "payments", "refunds"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(repo(&format!("examples/shop/k8s/{f}.yaml"))).expect("read")
            })
            .collect::<Vec<_>>()
            .join("---\n");
        assert_eq!(data(&back), data(&original));
    }
}

fn data(text: &str) -> Vec<serde_json::Value> {
    sluice_policy::load::parse_yaml(&Path::new("x").into(), text)
        .0
        .into_iter()
        .map(|d| d.value)
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn every_workload_kind_validates_strictly_against_1_29_and_1_33_in_both_modes() {
    let kinds = repo("controller/tests/golden/kinds.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let have_validator = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    for mode in ["native", "classic"] {
        let (code, out, err) = sluice(&[
            "inject",
            "--mode",
            mode,
            "--image",
            "registry.example/sluice-proxy:0.1.0",
            kinds.to_str().expect("path"),
        ]);
        assert_eq!(code, 0, "{err}");
        for line in [
            "deployment/web: injected",
            "statefulset/db: injected",
            "daemonset/agent: injected",
            "daemonset/node-exporter: skipped: host network",
            "replicaset/worker: injected",
            "job/report: injected",
            "cronjob/cleanup: injected",
            "pod/debug: skipped: opted out",
            "pod/solo: injected",
            "configmap/settings: passed through",
        ] {
            assert!(err.contains(line), "{mode}: {line}\n{err}");
        }
        assert!(
            out.contains("image: \"registry.example/sluice-proxy-init:0.1.0\""),
            "{out}"
        );
        if mode == "classic" {
            assert!(err.contains("the proxy exits with the app"), "{err}");
        }
        let file = dir.path().join(format!("{mode}.yaml"));
        std::fs::write(&file, &out).expect("write");
        if !have_validator {
            eprintln!("SKIP kubernetes-validate (PyPI) is missing: the schemas are not checked");
            continue;
        }
        for version in ["1.29.0", "1.33.0"] {
            let check = Command::new("kubernetes-validate")
                .args(["--strict", "-k", version])
                .arg(&file)
                .output()
                .expect("kubernetes-validate");
            let report = String::from_utf8_lossy(&check.stdout);
            assert!(
                check.status.success() && !report.contains("ERROR"),
                "{mode} against {version}:\n{report}{}\n{out}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
}
