//! W3C `baggage` list-members: finding one by key and adding one without disturbing the rest.
//!
//! A workload in an ephemeral environment is reached because its requests carry the member
//! `sluice-env=NAME` ([`ENVIRONMENT_MEMBER`]). The environment's sidecars and the local
//! ingress add it when it is missing, so the members an application set must come out exactly
//! as they went in: [`with_member`] never re-serializes, it only appends. Both the proxy and
//! the controller's ingress use these functions, so they agree on what "already present"
//! means with each other and with routing (`sluice-proxy`'s baggage match).
//!
//! The grammar (<https://www.w3.org/TR/baggage/#header-content>):
//!
//! ```text
//! baggage-string = list-member 0*179( OWS "," OWS list-member )
//! list-member    = key OWS "=" OWS value *( OWS ";" OWS property )
//! key            = token                ; case-sensitive
//! OWS            = *( SP / HTAB )
//! ```
//!
//! Several `baggage` header fields may be sent; they combine like any list header. A member
//! counts as present when some field has a list-member whose key, with OWS trimmed, equals the
//! key exactly. A field that is not visible ASCII is ignored, as routing ignores it.
//!
//! ```
//! use sluice_policy::baggage::{has_member, with_member};
//!
//! let sent = [b"userId=alice, theme = dark;ttl=5".as_slice()];
//! assert!(!has_member(sent, "sluice-env"));
//! let merged = with_member(Some(sent[0]), "sluice-env", "pr-1");
//! assert_eq!(merged, b"userId=alice, theme = dark;ttl=5,sluice-env=pr-1");
//! assert!(has_member([merged.as_slice()], "sluice-env"));
//! ```

/// The member that names an ephemeral environment (the default of a Route's
/// `environments.baggage`).
pub const ENVIRONMENT_MEMBER: &str = "sluice-env";

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_ows(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_ows(*last)
    {
        s = rest;
    }
    s
}

/// Whether a header field value is one routing reads: visible ASCII, SP and HTAB only.
fn readable(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The key of one list-member (`key = value ; props`), OWS trimmed; `None` without `=`.
fn member_key(member: &[u8]) -> Option<&[u8]> {
    let kv = member.split(|&b| b == b';').next()?;
    let eq = kv.iter().position(|&b| b == b'=')?;
    Some(trim_ows(&kv[..eq]))
}

/// Whether any of these `baggage` field values has a list-member with this `key`. Does not
/// allocate.
pub fn has_member<'a>(values: impl IntoIterator<Item = &'a [u8]>, key: &str) -> bool {
    values.into_iter().filter(|v| readable(v)).any(|v| {
        v.split(|&b| b == b',')
            .any(|m| member_key(m) == Some(key.as_bytes()))
    })
}

/// `existing` (one `baggage` field value, or none) with the member `key=value` appended:
/// `existing` byte for byte, then `,` (unless it is empty or already ends in a comma) and the
/// member. `value` must already be percent-encoded where the grammar requires it; callers
/// pass DNS labels, which need none. Check [`has_member`] first: this never looks for a
/// member that is already there.
pub fn with_member(existing: Option<&[u8]>, key: &str, value: &str) -> Vec<u8> {
    let existing = existing.unwrap_or_default();
    let mut out = Vec::with_capacity(existing.len() + key.len() + value.len() + 2);
    out.extend_from_slice(existing);
    match trim_ows(existing).last() {
        None | Some(b',') => {}
        Some(_) => out.push(b','),
    }
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out
}

/// The members of one field value as written (each list-member's bytes between commas), for
/// tests and diagnostics.
pub fn members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .filter(|m| !trim_ows(m).is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn presence_follows_the_grammar() {
        let has = |v: &str| has_member([v.as_bytes()], ENVIRONMENT_MEMBER);
        assert!(has("sluice-env=pr-1"));
        assert!(has("a=1, sluice-env = pr-1 ;ttl=5"));
        assert!(has("a=1,\tsluice-env\t=pr-1"));
        // Keys are case-sensitive tokens; a property or a value is not a key.
        assert!(!has("Sluice-Env=pr-1"));
        assert!(!has("a=1;sluice-env=pr-1"));
        assert!(!has("a=sluice-env"));
        assert!(!has("sluice-envx=1"));
        // Without `=` it is not a list-member.
        assert!(!has("sluice-env"));
        assert!(!has(""));
        // Not readable: ignored, as routing ignores it.
        assert!(!has_member(
            [b"sluice-env=pr-1,x=\xff".as_slice()],
            ENVIRONMENT_MEMBER
        ));
        // Any field of several.
        assert!(has_member(
            [b"a=1".as_slice(), b"sluice-env=x".as_slice()],
            ENVIRONMENT_MEMBER
        ));
    }

    #[test]
    fn appending_keeps_what_was_there() {
        let add = |v: Option<&str>| {
            String::from_utf8(with_member(v.map(str::as_bytes), "sluice-env", "pr-1"))
                .expect("ascii")
        };
        assert_eq!(add(None), "sluice-env=pr-1");
        assert_eq!(add(Some("")), "sluice-env=pr-1");
        assert_eq!(add(Some("  ")), "  sluice-env=pr-1");
        assert_eq!(add(Some("a=1")), "a=1,sluice-env=pr-1");
        assert_eq!(add(Some("a=1 , ")), "a=1 , sluice-env=pr-1");
        assert_eq!(add(Some("a=%20x;p")), "a=%20x;p,sluice-env=pr-1");
    }

    /// A key: a token (here a safe subset of tchar, plus the key being tested sometimes).
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9!#$&'*+.^_`|~-]{1,12}",
            Just(ENVIRONMENT_MEMBER.to_owned()),
            Just("Sluice-Env".to_owned()),
        ]
    }

    /// A value: baggage-octets, percent-encoded bytes included.
    fn value() -> impl Strategy<Value = String> {
        "([!#-+\\--:<-\\[\\]-~]|%[0-9A-F]{2}){0,12}"
    }

    fn ows() -> impl Strategy<Value = String> {
        "[ \t]{0,2}"
    }

    /// One list-member with arbitrary OWS and properties.
    fn member() -> impl Strategy<Value = String> {
        (
            ows(),
            key(),
            ows(),
            ows(),
            value(),
            prop::collection::vec(("[ \t]{0,1}", "[a-z]{1,5}(=[a-z0-9]{1,4})?"), 0..3),
            ows(),
        )
            .prop_map(|(a, k, b, c, v, props, d)| {
                let mut m = format!("{a}{k}{b}={c}{v}");
                for (o, p) in props {
                    m.push_str(&format!("{o};{o}{p}"));
                }
                m.push_str(&d);
                m
            })
    }

    /// Zero or more `baggage` field values, each one or more members.
    fn fields() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop::collection::vec(member(), 1..6).prop_map(|ms| ms.join(",")),
            0..4,
        )
    }

    /// What routing would read: the first value of `key`, as the proxy's matcher finds it.
    fn routed<'a>(fields: impl IntoIterator<Item = &'a [u8]>, key: &str) -> Option<String> {
        fields
            .into_iter()
            .filter(|v| readable(v))
            .flat_map(|v| v.split(|&b| b == b','))
            .find_map(|m| {
                let kv = m.split(|&b| b == b';').next()?;
                let eq = kv.iter().position(|&b| b == b'=')?;
                (trim_ows(&kv[..eq]) == key.as_bytes())
                    .then(|| String::from_utf8_lossy(trim_ows(&kv[eq + 1..])).into_owned())
            })
    }

    /// The sidecar's rule: add to the first field, or make one, unless present.
    fn merge(fields: &[String]) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = fields.iter().map(|f| f.as_bytes().to_vec()).collect();
        if has_member(out.iter().map(Vec::as_slice), ENVIRONMENT_MEMBER) {
            return out;
        }
        match out.first_mut() {
            Some(first) => *first = with_member(Some(first), ENVIRONMENT_MEMBER, "pr-9"),
            None => out.push(with_member(None, ENVIRONMENT_MEMBER, "pr-9")),
        }
        out
    }

    proptest! {
        #[test]
        fn merging_never_duplicates_never_overwrites_and_keeps_every_byte(fields in fields()) {
            let before = routed(fields.iter().map(|f| f.as_bytes()), ENVIRONMENT_MEMBER);
            let after = merge(&fields);
            let env_members = after
                .iter()
                .flat_map(|f| members(f))
                .filter(|m| member_key(m) == Some(ENVIRONMENT_MEMBER.as_bytes()))
                .count();
            match before {
                // Present: nothing changes at all.
                Some(_) => prop_assert_eq!(
                    after.clone(),
                    fields.iter().map(|f| f.as_bytes().to_vec()).collect::<Vec<_>>()
                ),
                // Missing: exactly one is added, and routing now reads it.
                None => {
                    prop_assert_eq!(env_members, 1);
                    let now = routed(after.iter().map(Vec::as_slice), ENVIRONMENT_MEMBER);
                    prop_assert_eq!(now.as_deref(), Some("pr-9"));
                }
            }
            // Every field that was sent starts its merged self, byte for byte, and no other
            // member moved or changed.
            prop_assert_eq!(after.len(), fields.len().max(1));
            for (f, a) in fields.iter().zip(&after) {
                prop_assert!(a.starts_with(f.as_bytes()));
                let kept: Vec<&[u8]> = members(a).take(members(f.as_bytes()).count()).collect();
                let sent: Vec<&[u8]> = members(f.as_bytes()).collect();
                prop_assert_eq!(kept, sent);
            }
            // Merging again changes nothing.
            let again = merge(&after.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect::<Vec<_>>());
            prop_assert_eq!(again, after);
        }
    }
}
