use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::*;

struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = match parent {
        Some(p) => params.signed_by(&key, &p.issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    Ca {
        cert,
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate (DER) for `names`, signed by `issuer` (self-signed when `None`).
fn client(names: &[&str], issuer: Option<&Ca>, expired: bool) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = match issuer {
        Some(ca) => params.signed_by(&key, &ca.issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    cert.der().to_vec()
}

fn spine(root: &Ca) -> SpineCa {
    SpineCa::from_der(&[root.cert.der().clone()]).unwrap()
}

const RR8: &str = "rr8.client.nems.test";

#[test]
fn forwarded_certificates_must_chain_be_current_and_name_the_asid() {
    let root = ca("spine root", None);
    let intermediate = ca("spine intermediate", Some(&root));
    let spine = spine(&root);
    let now = UnixTime::now();
    let direct = client(&[RR8], Some(&root), false);
    assert_eq!(spine.verify(&direct, &[], RR8, now), Ok(()));
    // Issued by an intermediate: valid with the intermediate forwarded, not without.
    let leaf = client(&[RR8], Some(&intermediate), false);
    let chain = vec![intermediate.cert.der().to_vec()];
    assert_eq!(spine.verify(&leaf, &chain, RR8, now), Ok(()));
    assert_eq!(
        spine.verify(&leaf, &[], RR8, now),
        Err(CertificateProblem::Untrusted)
    );
    // The right name, but self-signed (a forgery), or from another CA.
    let forged = client(&[RR8], None, false);
    assert_eq!(
        spine.verify(&forged, &[], RR8, now),
        Err(CertificateProblem::Untrusted)
    );
    let rogue = ca("rogue", None);
    assert_eq!(
        spine.verify(&client(&[RR8], Some(&rogue), false), &[], RR8, now),
        Err(CertificateProblem::Untrusted)
    );
    // Expired.
    assert_eq!(
        spine.verify(&client(&[RR8], Some(&root), true), &[], RR8, now),
        Err(CertificateProblem::OutsideValidity)
    );
    // Valid, but for another identity; not a certificate at all.
    assert_eq!(
        spine.verify(&direct, &[], "other.client.nems.test", now),
        Err(CertificateProblem::OtherIdentity)
    );
    assert_eq!(
        spine.verify(b"not a certificate", &[], RR8, now),
        Err(CertificateProblem::Invalid)
    );
}

fn trust() -> Trust {
    Trust::new(
        ClientRoles {
            edge: vec!["edge.nems.test".into()],
            adapter: vec!["adapter.nems.test".into()],
            operator: vec!["ops.nems.test".into()],
            direct: vec![DirectClient {
                identity: "feed.nems.test".into(),
                asid: "200000000333".into(),
            }],
        },
        None,
    )
    .unwrap()
}

fn peer_of(trust: &Trust, names: &[&str]) -> Peer {
    let der = client(names, None, false);
    trust.roles_of_certificate(&CertificateDer::from(der))
}

#[test]
fn a_certificate_gets_the_one_role_its_identity_names() {
    let trust = trust();
    for (names, role) in [
        (&["edge.nems.test"][..], Role::Edge),
        (&["ADAPTER.nems.test"][..], Role::Adapter),
        (&["x.nems.test", "ops.nems.test"][..], Role::Operator),
        (&["feed.nems.test"][..], Role::Direct),
    ] {
        let peer = peer_of(&trust, names);
        assert!(peer.roles.has(role), "{names:?}");
        assert_eq!(peer.roles, Roles::of(&[role]), "{names:?}");
    }
    assert_eq!(
        peer_of(&trust, &["feed.nems.test"]).direct_asid.as_deref(),
        Some("200000000333")
    );
    // Unknown identities, and identities of two roles, get none.
    assert_eq!(peer_of(&trust, &["who.nems.test"]).roles, Roles::NONE);
    assert_eq!(
        peer_of(&trust, &["edge.nems.test", "ops.nems.test"]).roles,
        Roles::NONE
    );
}

fn named(asid: &str) -> pb::Caller {
    pb::Caller {
        asid: asid.into(),
        ods_code: "RR8".into(),
        client_certificate: vec![1, 2, 3],
        ..Default::default()
    }
}

#[test]
fn only_an_edge_names_the_caller_and_a_direct_caller_is_its_own_asid() {
    let trust = trust();
    let edge = peer_of(&trust, &["edge.nems.test"]);
    let (caller, proof) = trust
        .caller(Some(&edge), Some(named("200000000111")))
        .unwrap();
    assert_eq!(caller.asid, "200000000111");
    assert!(matches!(proof, Proof::Forwarded(None)));
    assert!(matches!(
        trust.caller(Some(&edge), None),
        Err(CallerError::Missing)
    ));

    let direct = peer_of(&trust, &["feed.nems.test"]);
    for request in [None, Some(named("")), Some(named("200000000333"))] {
        let (caller, proof) = trust.caller(Some(&direct), request).unwrap();
        assert_eq!(caller.asid, "200000000333");
        assert!(caller.client_certificate.is_empty());
        assert!(matches!(proof, Proof::Bound));
    }
    match trust.caller(Some(&direct), Some(named("200000000111"))) {
        Err(CallerError::Impersonation(bound, r)) => {
            assert_eq!(bound.asid, "200000000333");
            assert_eq!(r.code, SpineCode::AccessDenied);
            assert!(r.diagnostics.contains("200000000111"), "{}", r.diagnostics);
        }
        other => panic!("impersonation accepted: {other:?}"),
    }

    for peer in [
        Some(peer_of(&trust, &["adapter.nems.test"])),
        Some(peer_of(&trust, &["ops.nems.test"])),
        None,
    ] {
        assert!(matches!(
            trust.caller(peer.as_ref(), Some(named("200000000111"))),
            Err(CallerError::Refused(_))
        ));
    }
}

#[test]
fn plaintext_listeners_grant_fixed_roles() {
    use gate::Listener;
    let service = Listener::Service.plaintext_roles();
    let operator = Listener::Operator.plaintext_roles();
    assert!(service.has(Role::Edge) && service.has(Role::Adapter));
    assert!(!service.has(Role::Operator) && !service.has(Role::Direct));
    assert_eq!(operator, Roles::of(&[Role::Operator]));
}
