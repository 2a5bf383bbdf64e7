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
