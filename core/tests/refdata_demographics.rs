//! The demographics CSV reader: the documented format, normalisation, and bad rows reported
//! by line with the column named and no patient data in the reason.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on unexpected errors"
)]

use std::convert::Infallible;
use std::path::Path;

use nems_core::refdata::{FileKind, ReadError, ReadReport, read_demographics};
use nems_proto::v1::{PatientFlag, PatientRecord};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/refdata")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn patients(bytes: &[u8]) -> (Vec<PatientRecord>, ReadReport) {
    let mut rows = Vec::new();
    let report = read_demographics(bytes, 2, |batch| {
        rows.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one argument per column keeps the table readable"
)]
fn patient(
    nhs_number: &str,
    birth_date: &str,
    postcode: &str,
    previous_postcode: &str,
    gp_practice: &str,
    flag: PatientFlag,
    date_of_death: &str,
    last_updated: &str,
) -> PatientRecord {
    PatientRecord {
        nhs_number: nhs_number.to_owned(),
        postcode: postcode.to_owned(),
        previous_postcode: previous_postcode.to_owned(),
        gp_practice: gp_practice.to_owned(),
        birth_date: birth_date.to_owned(),
        flag: flag as i32,
        date_of_death: date_of_death.to_owned(),
        last_updated: last_updated.to_owned(),
    }
}

#[test]
fn rows_come_out_normalised() {
    let (rows, report) = patients(&fixture("demographics.csv"));
    assert_eq!(report.kind, FileKind::Demographics);
    assert_eq!((report.accepted, report.bad), (3, 0), "{report:?}");
    assert_eq!(
        rows,
        vec![
            patient(
                "9434765919",
                "1987-10-02",
                "LS14AP",
                "LS27EW",
                "B86001",
                PatientFlag::Unspecified,
                "",
                "2024-01-31T09:00:00+00:00",
            ),
            patient(
                "9990000018",
                "2019-06-15",
                "B11AA",
                "",
                "",
                PatientFlag::Sensitive,
                "",
                "2024-05-14T16:20:00.123+01:00",
            ),
            patient(
                "9990000026",
                "1950-11-30",
                "CF144XW",
                "",
                "W97001",
                PatientFlag::Invalid,
                "2024-02-10",
                "2024-02-11T08:00:00Z",
            ),
        ]
    );
}

#[test]
fn columns_may_come_in_any_order() {
    let text = "last_updated,NHS_NUMBER,flag,birth_date,postcode,previous_postcode,gp_practice,date_of_death\n\
                2024-01-31T09:00:00+00:00,9990000018,s,1984-03-02,LS1 4AP,,b86001,\n";
    let (rows, report) = patients(text.as_bytes());
    assert_eq!(report.bad, 0, "{report:?}");
    assert_eq!(
        rows,
        vec![patient(
            "9990000018",
            "1984-03-02",
            "LS14AP",
            "",
            "B86001",
            PatientFlag::Sensitive,
            "",
            "2024-01-31T09:00:00+00:00",
        )]
    );
}

#[test]
fn bad_rows_name_the_column_and_line_and_never_the_value() {
    let bytes = fixture("demographics-malformed.csv");
    let (rows, report) = patients(&bytes);
    let kept: Vec<&str> = rows.iter().map(|r| r.nhs_number.as_str()).collect();
    assert_eq!(kept, ["9990000018", "9990000077", "9990000093"]);
    assert_eq!((report.accepted, report.bad), (3, 7));
    let bad: Vec<(u64, &str)> = report
        .bad_rows
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(
        bad,
        vec![
            (3, "column nhs_number: not a valid NHS number"),
            (4, "column postcode: not a valid postcode"),
            (5, "column flag: not empty, S or I"),
            (6, "column birth_date: not a date"),
            (
                7,
                "column last_updated: not an instant with offset (YYYY-MM-DDThh:mm:ss+hh:mm)"
            ),
            (8, "expected 8 columns, found 7"),
            (10, "column date_of_death: before birth_date"),
        ]
    );
    let text = String::from_utf8(bytes).unwrap();
    let values: Vec<&str> = text.lines().skip(1).flat_map(|l| l.split(',')).collect();
    for reason in report.bad_rows.iter().map(|b| &b.reason) {
        for value in values.iter().filter(|v| v.len() > 1) {
            assert!(!reason.contains(value), "{reason} quotes {value}");
        }
    }
}

#[test]
fn a_header_missing_a_column_is_refused_with_its_names() {
    let text = "nhs_number,birth_date,postcode,gp_practice,flag,date_of_death,last_updated\n\
                9990000018,1984-03-02,LS1 4AP,B86001,,,2024-01-31T09:00:00+00:00\n";
    let err = read_demographics(text.as_bytes(), 10, |_| Ok::<_, Infallible>(())).unwrap_err();
    let ReadError::Refused(refusal) = &err else {
        panic!("{err:?}");
    };
    assert!(
        refusal
            .expected
            .starts_with("the demographics CSV (header nhs_number,")
    );
    assert_eq!(
        refusal.found,
        "a header row of 7 columns: nhs_number, birth_date, postcode, gp_practice, flag, ..."
    );
}
