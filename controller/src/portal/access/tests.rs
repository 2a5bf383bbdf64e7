use super::*;

fn shop() -> PolicySet {
    PolicySet::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy"),
    )
    .expect("the shop's policy")
}

#[test]
fn the_decision_follows_security_and_review() {
    let set = shop();
    let ernie = User {
        name: "ernie".into(),
        email: Some("ernie@shop.example".into()),
    };
    let d = decide(
        &set,
        &ObjectRef::new("default", "checkout"),
        &ObjectRef::new("default", "catalog"),
        Asker::User(&ernie),
    );
    assert!(d.immediate, "{d:?}");
    assert_eq!(
        d.sentence,
        "Submitting grants access at once: catalog is open and storefront lets its services \
         get access without review."
    );
    let d = decide(
        &set,
        &ObjectRef::new("default", "checkout"),
        &ObjectRef::new("default", "payments"),
        Asker::User(&ernie),
    );
    assert!(!d.immediate);
    assert_eq!(
        d.sentence,
        "Submitting sends a request to team payments: payments is restricted."
    );
}

#[test]
fn validation_names_every_problem() {
    let set = shop();
    let input = FormInput {
        from: "chekout".into(),
        to: "payments".into(),
        env: "pr 1".into(),
        rpcs: vec!["nonsense".into(), "GET /v1/nothing".into()],
        reason: "x".repeat(MAX_REASON + 1),
        ephemeral: "sometimes".into(),
    };
    let Err(errors) = validate(&set, &input) else {
        panic!("accepted");
    };
    let all = errors.join("\n");
    for want in [
        "`chekout` is not a declared service. Did you mean checkout?",
        "`nonsense` is not an endpoint",
        "payments does not declare `GET /v1/nothing`",
        "The reason is too long",
        "`sometimes` is not an ephemeral-environment mode",
        "`pr 1` is not an environment name",
    ] {
        assert!(all.contains(want), "{want} missing from {all}");
    }
}

#[test]
fn membership_matches_name_or_email() {
    let set = shop();
    let (_, team) = team_of(&set, &ObjectRef::new("default", "payments")).expect("payments' team");
    let user = |name: &str, email: Option<&str>| User {
        name: name.into(),
        email: email.map(str::to_owned),
    };
    assert!(is_member(team, &user("pat payments", None)));
    assert!(is_member(team, &user("pat", Some("PAT@shop.example"))));
    assert!(is_member(team, &user("sam@shop.example", None)));
    assert!(!is_member(team, &user("ernie", Some("ernie@shop.example"))));
}

#[test]
fn an_immediate_grant_is_for_the_callers_team_and_no_one_reviews_their_own() {
    let set = shop();
    let (checkout, catalog) = (
        ObjectRef::new("default", "checkout"),
        ObjectRef::new("default", "catalog"),
    );
    let user = |name: &str, email: Option<&str>| User {
        name: name.into(),
        email: email.map(str::to_owned),
    };
    let mallory = user("mallory", None);
    let d = decide(&set, &checkout, &catalog, Asker::User(&mallory));
    assert!(!d.immediate);
    assert_eq!(d.reviewer_team, "storefront");
    assert_eq!(
        d.sentence,
        "Submitting sends a request to team storefront: mallory is not a member of team \
         storefront, which owns checkout."
    );
    assert!(decide(&set, &checkout, &catalog, Asker::DevMode).immediate);
    // One person under several names.
    let pat = user("pat", Some("pat@shop.example"));
    assert!(same_person(&set, &pat, &user("PAT@shop.example", None)));
    assert!(same_person(&set, &pat, &user("Pat Payments", None)));
    assert!(!same_person(&set, &pat, &user("Sam Security", None)));
    assert!(!same_person(&set, &pat, &mallory));
}

/// The shop, plus a ledger database that payments owns: Postgres on 5432 (opaque TCP) beside
/// an HTTP admin port.
fn shop_with_ledger() -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy");
    for entry in walk(&shop) {
        let to = dir
            .path()
            .join(entry.strip_prefix(&shop).expect("under the shop"));
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&entry, &to).expect("copy");
    }
    std::fs::write(
        dir.path().join("payments/ledger.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: { name: ledger }\n\
         spec:\n  team: payments\n  security: open\n  ports:\n    \
         - { name: postgres, port: 5432, protocol: tcp }\n    \
         - { name: admin, port: 8080, protocol: http }\n  \
         endpoints: [{ rpc: GET /admin/stats }]\n",
    )
    .expect("write ledger");
    let set = PolicySet::load(dir.path()).expect("the shop with a ledger");
    (dir, set)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn opaque_tcp_is_asked_for_per_declared_tcp_port() {
    let (_dir, set) = shop_with_ledger();
    let input = |rpcs: &[&str]| FormInput {
        from: "checkout".into(),
        to: "ledger".into(),
        rpcs: rpcs.iter().map(|r| (*r).to_owned()).collect(),
        ephemeral: "shared".into(),
        ..FormInput::default()
    };
    // The denial link's `rpc=tcp:5432`, as submitted: granted as exactly that port.
    let checked = validate(&set, &input(&["tcp:5432", "GET /admin/stats"])).expect("valid");
    assert_eq!(checked.rpcs, ["tcp:5432", "GET /admin/stats"]);
    assert_eq!(tcp_ports(&set, &checked.callee), [5432]);

    let Err(errors) = validate(&set, &input(&["tcp", "tcp:8080", "tcp:6432"])) else {
        panic!("accepted TCP to undeclared or HTTP ports");
    };
    let all = errors.join("\n");
    for want in [
        "`tcp` would open every port of ledger to opaque TCP; name one port: it declares \
         `tcp:5432`.",
        "ledger does not take opaque TCP on port 8080; it declares `tcp:5432`.",
        "ledger does not take opaque TCP on port 6432; it declares `tcp:5432`.",
    ] {
        assert!(all.contains(want), "{want} missing from {all}");
    }
    // A service with no TCP port says so.
    let mut to_payments = input(&["tcp:8080"]);
    to_payments.to = "payments".into();
    let Err(errors) = validate(&set, &to_payments) else {
        panic!("accepted TCP to payments' HTTP port");
    };
    assert!(
        errors.join("\n").contains(
            "payments does not take opaque TCP on port 8080; payments declares no port with \
             `protocol: tcp`."
        ),
        "{errors:?}"
    );
}
