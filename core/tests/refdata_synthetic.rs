//! The synthetic data set under `core/data/synthetic/` (embedded by the launcher as the run
//! command's defaults) parses with no bad rows and is consistent across its files.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on unexpected errors"
)]

use std::convert::Infallible;
use std::path::Path;

use nems_core::refdata::{
    Batch, FileKind, ReadReport, read_any, read_code_map, read_postcodes, read_practices,
};
use nems_proto::v1::{CodeMapRow, PostcodeRow, PracticeRow};

fn synthetic(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/synthetic")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn postcodes(bytes: &[u8]) -> (Vec<PostcodeRow>, ReadReport) {
    let mut rows = Vec::new();
    let report = read_postcodes(bytes, 8, |batch| {
        rows.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

fn practices(bytes: &[u8]) -> (Vec<PracticeRow>, ReadReport) {
    let mut rows = Vec::new();
    let report = read_practices(bytes, 8, |batch| {
        rows.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

fn code_map(bytes: &[u8]) -> (Vec<CodeMapRow>, ReadReport) {
    let mut rows = Vec::new();
    let report = read_code_map(bytes, 8, |batch| {
        rows.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

fn assert_clean(report: &ReadReport, kind: FileKind, accepted: u64) {
    assert_eq!(report.kind, kind);
    assert_eq!(report.accepted, accepted, "{report:?}");
    assert_eq!((report.skipped, report.bad), (0, 0), "{report:?}");
}

#[test]
fn the_synthetic_data_set_parses_cleanly() {
    let (rows, report) = postcodes(&synthetic("nhg-synthetic.csv"));
    assert_clean(&report, FileKind::Nhspd, 31);
    let terminated: Vec<&str> = rows
        .iter()
        .filter(|r| r.terminated)
        .map(|r| r.postcode.as_str())
        .collect();
    assert_eq!(terminated, ["LS11ZZ"]);
    let mut sub_icbs: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.sub_icb.iter().map(String::as_str))
        .collect();
    sub_icbs.dedup();
    assert_eq!(sub_icbs, ["15F", "00L", "W2U3Z", "72Q", "7A4"]);
    assert!(rows.iter().any(|r| r.country == "W92000004"));
    let first = PostcodeRow {
        postcode: "LS14AP".to_owned(),
        sub_icb: vec!["15F".to_owned()],
        local_authority: vec!["409".to_owned(), "E08000035".to_owned()],
        country: "E92000001".to_owned(),
        terminated: false,
    };
    assert_eq!(rows[0], first);

    let (practices, report) = practices(&synthetic("epraccur-synthetic.csv"));
    assert_clean(&report, FileKind::Epraccur, 9);
    let closed: Vec<&str> = practices
        .iter()
        .filter(|p| p.closed)
        .map(|p| p.code.as_str())
        .collect();
    assert_eq!(closed, ["B86003"]);
    for p in &practices {
        assert!(sub_icbs.contains(&p.parent_sub_icb.as_str()), "{p:?}");
    }

    let (pairs, report) = code_map(&synthetic("sicbl-codes-synthetic.csv"));
    assert_clean(&report, FileKind::SubIcbCodeMap, 5);
    for code in &sub_icbs {
        assert!(
            pairs.iter().any(|p| p.ods == *code),
            "{code} has no GSS code"
        );
    }

    let mut patients = Vec::new();
    let report = read_any(synthetic("demographics-synthetic.csv").as_slice(), 4, |b| {
        let Batch::Patients(batch) = b else {
            panic!("not patients")
        };
        patients.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    assert_clean(&report, FileKind::Demographics, 11);
    let postcodes: Vec<&str> = rows.iter().map(|r| r.postcode.as_str()).collect();
    for p in &patients {
        for pc in [&p.postcode, &p.previous_postcode] {
            assert!(
                pc.is_empty() || postcodes.contains(&pc.as_str()),
                "{pc} not in NHSPD"
            );
        }
        let known = p.gp_practice.is_empty() || practices.iter().any(|x| x.code == p.gp_practice);
        assert!(known, "{} not in epraccur", p.gp_practice);
    }
    assert_eq!(patients.iter().filter(|p| p.flag == 1).count(), 1);
    assert_eq!(patients.iter().filter(|p| p.flag == 2).count(), 1);
    assert!(
        patients
            .iter()
            .any(|p| p.gp_practice.is_empty() && p.flag == 0)
    );
    assert!(patients.iter().any(|p| !p.previous_postcode.is_empty()));
}
