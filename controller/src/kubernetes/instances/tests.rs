//! The Kubernetes instance backend without a cluster: names, the copy's Deployment, the spec
//! annotation, choosing the source Deployment, status from pods, and what is refused.

use super::*;
use serde_json::json;

fn spec(name: &str, version: &str) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        namespace: "shop".into(),
        service: "checkout".into(),
        version: version.into(),
        environment: "pr-1".into(),
        role: String::new(),
        run: Run::Version,
        generation: 0,
    }
}

fn service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {"selector": {"app": "checkout"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .expect("a Service")
}

/// The service's own Deployment of `version` (`None`: no version label).
fn deployment(name: &str, app: &str, version: Option<&str>, image: &str) -> Deployment {
    let mut labels = json!({"app": app, "tier": "backend"});
    if let Some(v) = version {
        labels["sluice.dev/version"] = json!(v);
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": "shop", "uid": "4b1c-source",
            "resourceVersion": "812", "generation": 3,
            "labels": {"app": app, "owner": "storefront"},
            "annotations": {"deployment.kubernetes.io/revision": "3"},
        },
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": app}},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels, "annotations": {"sluice.dev/inject": "enabled"}},
                "spec": {"containers": [{
                    "name": app, "image": image,
                    "ports": [{"name": "http", "containerPort": 8080}],
                }]},
            },
        },
        "status": {"replicas": 4, "readyReplicas": 4},
    }))
    .expect("a Deployment")
}

#[test]
fn instance_names_become_dns_labels_that_stay_unique() {
    assert_eq!(object_name("checkout.pr-1"), "checkout-pr-1");
    assert_eq!(object_name("payments-v2"), "payments-v2");
    assert_eq!(object_name("Checkout_Copy.pr-1"), "checkout-copy-pr-1");
    let long = format!("{}.{}", "a".repeat(60), "b".repeat(40));
    let other = format!("{}.{}", "a".repeat(60), "c".repeat(40));
    let (n, m) = (object_name(&long), object_name(&other));
    assert!(n.len() <= 63 && m.len() <= 63, "{n} {m}");
    assert_ne!(n, m, "a digest of the whole name keeps them apart");
    for name in [n.as_str(), m.as_str()] {
        assert!(
            crate::env::model::is_label(name, 63),
            "{name} is not a DNS label"
        );
    }
    assert_eq!(object_name(&long), n, "stable");
}

#[test]
fn the_copy_keeps_the_template_and_is_labelled_as_the_instance() -> Result<(), BackendError> {
    let source = deployment("checkout", "checkout", Some("v1"), "shop:0.1.0");
    let s = spec("checkout.pr-1", "v1");
    let copy = copy_of(&source, &s)?;
    let meta = &copy.metadata;
    assert_eq!(meta.name.as_deref(), Some("checkout-pr-1"));
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    assert!(meta.uid.is_none() && meta.resource_version.is_none());
    let labels = meta.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("sluice")
    );
    assert_eq!(
        labels.get(INSTANCE_LABEL).map(String::as_str),
        Some("checkout-pr-1")
    );
    assert!(
        !labels.contains_key("owner"),
        "the source's labels are its own"
    );
    let annotations = meta.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.len(), 1, "{annotations:?}");
    let d = copy.spec.as_ref().expect("spec");
    assert_eq!(d.replicas, Some(1));
    assert_eq!(
        d.selector.match_labels,
        Some(BTreeMap::from([(
            INSTANCE_LABEL.to_owned(),
            "checkout-pr-1".to_owned()
        )]))
    );
    assert!(d.selector.match_expressions.is_none());
    let t = template_labels(&copy);
    let want: BTreeMap<String, String> = [
        ("app", "checkout"),
        ("tier", "backend"),
        ("sluice.dev/version", "v1"),
        ("sluice.dev/environment", "pr-1"),
        ("sluice.dev/instance", "checkout-pr-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(t, want, "no role label for an ordinary instance");
    // The pod itself is the service's: image, ports, the injection opt-in.
    let template = &d.template;
    let pod = template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.containers[0].image.as_deref(), Some("shop:0.1.0"));
    assert_eq!(
        template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("sluice.dev/inject"))
            .map(String::as_str),
        Some("enabled")
    );
    assert_eq!(
        d.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );
    assert!(copy.status.is_none());
    // The Service still selects the copy's pod, the source's selector does too, but the
    // copy's own selector picks only its pods.
    let selector = BTreeMap::from([("app".to_owned(), "checkout".to_owned())]);
    assert!(selector.iter().all(|(k, v)| t.get(k) == Some(v)));
    assert!(!template_labels(&source).contains_key(INSTANCE_LABEL));

    let baseline = InstanceSpec {
        role: "baseline".into(),
        ..spec("payments-v1-baseline", "v1")
    };
    let t = template_labels(&copy_of(&source, &baseline)?);
    assert_eq!(
        t.get(ROLE_LABEL).map(String::as_str),
        Some("baseline"),
        "{t:?}"
    );
    Ok(())
}

#[test]
fn the_spec_round_trips_through_the_annotation() -> Result<(), BackendError> {
    let source = deployment("checkout", "checkout", Some("v1"), "shop:0.1.0");
    let s = InstanceSpec {
        role: "baseline".into(),
        generation: 7,
        ..spec("checkout.pr-1", "v1")
    };
    let copy = copy_of(&source, &s)?;
    assert_eq!(spec_of(&copy), Some(s));
    // The source is nobody's instance, and neither is a copy whose annotation was edited
    // to name another instance.
    assert_eq!(spec_of(&source), None);
    let mut edited = copy.clone();
    if let Some(a) = edited.metadata.annotations.as_mut() {
        a.insert(
            SPEC_ANNOTATION.into(),
            serde_json::to_string(&spec("catalog.pr-1", "v1")).unwrap_or_default(),
        );
    }
    assert_eq!(spec_of(&edited), None);
    let mut garbled = copy;
    if let Some(a) = garbled.metadata.annotations.as_mut() {
        a.insert(SPEC_ANNOTATION.into(), "{not json".into());
    }
    assert_eq!(spec_of(&garbled), None);
    Ok(())
}

#[test]
fn the_source_is_the_selected_deployment_of_that_version() -> Result<(), BackendError> {
    let deployments = [
        deployment("checkout-v2", "checkout", Some("v2"), "shop:0.2.0"),
        deployment("catalog", "catalog", Some("v1"), "shop:0.1.0"),
        deployment("checkout", "checkout", Some("v1"), "shop:0.1.0"),
    ];
    let found = source_for(&service(), &deployments, &spec("checkout.pr-1", "v1"))?;
    assert_eq!(found.metadata.name.as_deref(), Some("checkout"));
    let found = source_for(&service(), &deployments, &spec("checkout.pr-1", "v2"))?;
    assert_eq!(found.metadata.name.as_deref(), Some("checkout-v2"));

    // `app.kubernetes.io/version` counts when `sluice.dev/version` is absent.
    let mut standard = deployment("checkout-std", "checkout", None, "shop:0.3.0");
    if let Some(m) = standard
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        && let Some(l) = m.labels.as_mut()
    {
        l.insert(APP_VERSION_LABEL.into(), "v3".into());
    }
    let with_std = [standard];
    assert!(source_for(&service(), &with_std, &spec("checkout.pr-1", "v3")).is_ok());

    // A copy this backend made is never a source, though the Service selects it too.
    let copy = copy_of(&deployments[2], &spec("checkout.pr-1", "v1"))?;
    let only_copy = [copy];
    assert!(source_for(&service(), &only_copy, &spec("checkout.pr-2", "v1")).is_err());
    Ok(())
}

#[test]
fn a_missing_version_is_refused_with_what_exists_and_the_label_to_set() {
    let deployments = [
        deployment("checkout", "checkout", Some("v1"), "shop:0.1.0"),
        deployment("checkout-next", "checkout", None, "shop:0.2.0"),
        deployment("catalog", "catalog", Some("v2"), "shop:0.1.0"),
    ];
    let Err(BackendError::Unsupported(message)) =
        source_for(&service(), &deployments, &spec("checkout.pr-1", "v2"))
    else {
        panic!("v2 has no Deployment");
    };
    for part in [
        "no Deployment in namespace `shop` runs checkout v2",
        "checkout (version v1)",
        "checkout-next (no version label)",
        "`sluice.dev/version: v2`",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(!message.contains("catalog"), "{message}");

    let Err(BackendError::Unsupported(message)) =
        source_for(&service(), &deployments[2..], &spec("checkout.pr-1", "v1"))
    else {
        panic!("nothing runs checkout");
    };
    assert!(
        message
            .contains("no Deployment in namespace `shop` has pods the Service `checkout` selects"),
        "{message}"
    );

    let mut no_selector = service();
    if let Some(s) = no_selector.spec.as_mut() {
        s.selector = None;
    }
    let Err(BackendError::Unsupported(message)) =
        source_for(&no_selector, &deployments, &spec("checkout.pr-1", "v1"))
    else {
        panic!("no selector");
    };
    assert!(message.contains("has no selector"), "{message}");
}

fn pod(ready: bool, container_status: serde_json::Value) -> Pod {
    let mut status = json!({
        "phase": if ready { "Running" } else { "Pending" },
        "podIP": "10.244.1.5",
        "containerStatuses": [container_status],
    });
    if ready {
        status["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    }
    serde_json::from_value(json!({
            "metadata": {"name": "checkout-pr-1-6f7d-x2x9q", "namespace": "shop",
                "creationTimestamp": "2026-12-02T10:00:00Z",
                "labels": {"app": "checkout", INSTANCE_LABEL: "checkout-pr-1"}},
            "spec": {"containers": [
                {"name": "checkout", "image": "shop:0.1.0", "ports": [{"containerPort": 8080}]},
                {"name": "sluice-proxy", "image": "sluice-proxy:0.1.0", "ports": [{"containerPort": 4143}]},
            ]},
            "status": status,
        }))
        .expect("a Pod")
}

#[test]
fn the_status_comes_from_the_instances_pod() -> Result<(), BackendError> {
    let source = deployment("checkout", "checkout", Some("v1"), "shop:0.1.0");
    let s = InstanceSpec {
        generation: 2,
        ..spec("checkout.pr-1", "v1")
    };
    let copy = copy_of(&source, &s)?;
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_205_700);
    // 2026-12-02T10:01:30Z is 10 s before `now`.
    let running = pod(
        true,
        json!({"name": "checkout", "ready": true, "restartCount": 2, "image": "shop:0.1.0",
                "imageID": "", "state": {"running": {"startedAt": "2026-12-02T10:01:30Z"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}),
    );
    let st = status_of(&s, &copy, &[&running], now);
    assert_eq!(st.name, "checkout.pr-1");
    assert_eq!(st.generation, 2);
    assert!(st.running);
    assert_eq!(st.address.as_deref(), Some("10.244.1.5:8080"));
    assert_eq!(st.starts, 3);
    assert_eq!(st.last_exit.as_deref(), Some("exit status: 1 (Error)"));
    assert_eq!(st.up_ms, 10_000);
    assert_eq!(st.error, None);
    assert!(st.log_tail.is_empty());

    let pulling = pod(
        false,
        json!({"name": "checkout", "ready": false, "restartCount": 0, "image": "shop:9",
                "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"shop:9\""}}}),
    );
    let st = status_of(&s, &copy, &[&pulling], now);
    assert!(!st.running);
    assert_eq!(
        st.error.as_deref(),
        Some("ImagePullBackOff: Back-off pulling image \"shop:9\"")
    );

    // No pod yet: known to the backend, not running, no error.
    let st = status_of(&s, &copy, &[], now);
    assert!(!st.running && st.error.is_none() && st.address.is_none());
    assert_eq!(st.starts, 0);
    Ok(())
}

#[test]
fn a_command_is_refused_with_what_to_do_instead() {
    let command = InstanceSpec {
        run: Run::Command {
            argv: vec!["/home/dev/shop/target/debug/shop".into()],
            dir: "/home/dev/shop".into(),
            env: BTreeMap::new(),
        },
        ..spec("checkout.pr-1", "v1")
    };
    let Err(BackendError::Unsupported(message)) = runnable(&command) else {
        panic!("a command cannot run here");
    };
    assert!(
        message.contains("on Kubernetes, give a version"),
        "{message}"
    );
    assert!(runnable(&spec("checkout.pr-1", "v1")).is_ok());
}
