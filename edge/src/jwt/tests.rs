//! JWT rules, one row per claim rule.

use serde_json::{Value, json};

use super::*;

const NOW: i64 = 1_700_000_100;

fn claims() -> Value {
    json!({
        "iss": "https://consumer.example.nhs.uk",
        "sub": "https://fhir.nhs.uk/Id/accredited-system|200000000111",
        "aud": "https://nems.example.nhs.uk/STU3",
        "exp": 1_700_000_300,
        "iat": 1_700_000_000,
        "reason_for_request": "directcare",
        "scope": "patient/Subscription.write",
        "requesting_system": "https://fhir.nhs.uk/Id/accredited-system|200000000111",
        "requesting_organisation": "https://fhir.nhs.uk/Id/ods-organization-code|rr8",
    })
}

fn bearer(c: &Value) -> String {
    format!("Bearer {}", encode(c))
}

#[test]
fn valid_token_gives_the_caller() {
    let c = check(&bearer(&claims()), Operation::Create, NOW, 60).unwrap();
    assert_eq!(c.asid, "200000000111");
    assert_eq!(c.ods_code, "RR8");
    assert_eq!(c.user, None);
    // The American spelling is accepted too.
    let mut us = claims();
    let org = us
        .as_object_mut()
        .unwrap()
        .remove("requesting_organisation")
        .unwrap();
    us["requesting_organization"] = org;
    assert!(check(&bearer(&us), Operation::Create, NOW, 60).is_ok());
    // With a user, sub must be the user.
    let mut with_user = claims();
    with_user["requesting_user"] = json!("https://fhir.nhs.uk/Id/sds-role-profile-id|555");
    with_user["sub"] = json!("https://fhir.nhs.uk/Id/sds-role-profile-id|555");
    assert_eq!(
        check(&bearer(&with_user), Operation::Read, NOW, 60)
            .unwrap()
            .user
            .as_deref(),
        Some("https://fhir.nhs.uk/Id/sds-role-profile-id|555")
    );
}

#[test]
fn claim_rules() {
    type Edit = fn(&mut Value);
    let cases: Vec<(Edit, Operation, &str)> = vec![
        (
            |c| {
                c.as_object_mut().unwrap().remove("iss");
            },
            Operation::Create,
            "`iss`",
        ),
        (|c| c["aud"] = json!(""), Operation::Create, "`aud`"),
        (
            |c| {
                c.as_object_mut().unwrap().remove("sub");
            },
            Operation::Create,
            "`sub`",
        ),
        (
            |c| c["exp"] = json!(1_700_000_400),
            Operation::Create,
            "300",
        ),
        (
            |c| c["exp"] = json!("1700000300"),
            Operation::Create,
            "`exp`",
        ),
        (
            |c| {
                c["iat"] = json!(1_699_000_000);
                c["exp"] = json!(1_699_000_300);
            },
            Operation::Create,
            "expired",
        ),
        (
            |c| {
                c["iat"] = json!(1_700_010_000);
                c["exp"] = json!(1_700_010_300);
            },
            Operation::Create,
            "future",
        ),
        (
            |c| c["reason_for_request"] = json!("curiosity"),
            Operation::Create,
            "reason_for_request",
        ),
        (
            |c| c["scope"] = json!("patient/Subscription.read"),
            Operation::Create,
            "patient/Subscription.write",
        ),
        (
            |c| c["scope"] = json!("patient/Subscription.read"),
            Operation::Delete,
            "patient/Subscription.write",
        ),
        (
            |c| c["scope"] = json!("patient/Bundle.write"),
            Operation::Read,
            "Subscription.read",
        ),
        (
            |c| c["scope"] = json!("patient/Bundle.write patient/Subscription.write"),
            Operation::Publish,
            "exactly patient/Bundle.write",
        ),
        (
            |c| c["requesting_system"] = json!("200000000111"),
            Operation::Create,
            "requesting_system",
        ),
        (
            |c| {
                c.as_object_mut().unwrap().remove("requesting_organisation");
            },
            Operation::Create,
            "requesting_organisation",
        ),
        (
            |c| c["requesting_organisation"] = json!("RR8"),
            Operation::Create,
            "requesting_organisation",
        ),
        (
            |c| c["sub"] = json!("someone"),
            Operation::Create,
            "`sub` must equal `requesting_system`",
        ),
        (
            |c| c["requesting_user"] = json!("u1"),
            Operation::Create,
            "`sub` must equal `requesting_user`",
        ),
        (
            |c| c["requesting_patient"] = json!("http://fhir.nhs.net/Id/nhs-number|9434765918"),
            Operation::Read,
            "not a valid NHS number",
        ),
    ];
    for (edit, op, needle) in cases {
        let mut c = claims();
        if op == Operation::Publish {
            c["scope"] = json!("patient/Bundle.write");
        }
        edit(&mut c);
        let e = check(&bearer(&c), op, NOW, 60).unwrap_err();
        assert!(e.contains(needle), "`{e}` lacks `{needle}`");
        assert!(!e.contains("9434765918"));
    }
}

#[test]
fn token_shape_rules() {
    for (header, needle) in [
        ("Basic abc", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer a.b", "three"),
        ("Bearer a.b.c", "unsigned"),
        ("Bearer !!.??.", "header"),
    ] {
        let e = check(header, Operation::Read, NOW, 60).unwrap_err();
        assert!(e.contains(needle), "{header}: `{e}`");
    }
    let signed = format!(
        "Bearer {}",
        encode(&claims()).trim_end_matches('.').to_string() + ".c2ln"
    );
    assert!(
        check(&signed, Operation::Create, NOW, 60)
            .unwrap_err()
            .contains("unsigned")
    );
    let hs = format!(
        "Bearer {}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert!(
        check(&hs, Operation::Create, NOW, 60)
            .unwrap_err()
            .contains("alg")
    );
}
