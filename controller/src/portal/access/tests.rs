use super::*;

#[test]
fn forms_decode_like_browsers_send_them() {
    let fields = parse_form("rpc=GET+%2Fv1%2Fproducts%2F%7Bid%7D&reason=a%26b&x&bad=%zz%4");
    assert_eq!(fields[0], ("rpc".into(), "GET /v1/products/{id}".into()));
    assert_eq!(fields[1], ("reason".into(), "a&b".into()));
    assert_eq!(fields[2], ("x".into(), String::new()));
    assert_eq!(fields[3], ("bad".into(), "%zz%4".into()));
}

fn shop() -> PolicySet {
    PolicySet::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/policy"),
    )
    .expect("the shop's policy")
}

#[test]
fn the_decision_follows_security_and_review() {
    let set = shop();
    let d = decide(
        &set,
        &ObjectRef::new("default", "checkout"),
        &ObjectRef::new("default", "catalog"),
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
