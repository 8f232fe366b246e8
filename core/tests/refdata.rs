//! The reference data readers against small files in each official shape
//! (`tests/fixtures/refdata/`, rows from `shared/spec/reference-data.md` §5), malformed rows
//! and refused files.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on unexpected errors"
)]

use std::convert::Infallible;
use std::path::Path;

use nems_core::refdata::{
    Batch, FileKind, ReadError, ReadReport, read_any, read_code_map, read_postcodes, read_practices,
};
use nems_proto::v1::{CodeMapRow, PostcodeRow, PracticeRow, ReferenceDataSet};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/refdata")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Reads postcodes in batches of 2 (so batching is exercised) and returns every row.
fn postcodes(bytes: &[u8]) -> (Vec<PostcodeRow>, ReadReport) {
    let mut rows = Vec::new();
    let report = read_postcodes(bytes, 2, |batch| {
        assert!(!batch.is_empty() && batch.len() <= 2);
        rows.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

fn practices(bytes: &[u8]) -> (Vec<PracticeRow>, ReadReport) {
    let mut rows = Vec::new();
    let report = read_practices(bytes, 2, |batch| {
        rows.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

fn code_map(bytes: &[u8]) -> (Vec<CodeMapRow>, ReadReport) {
    let mut rows = Vec::new();
    let report = read_code_map(bytes, 2, |batch| {
        rows.extend(batch);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

fn row(
    postcode: &str,
    sub_icb: &[&str],
    la: &[&str],
    country: &str,
    terminated: bool,
) -> PostcodeRow {
    PostcodeRow {
        postcode: postcode.to_owned(),
        sub_icb: sub_icb.iter().map(|s| (*s).to_owned()).collect(),
        local_authority: la.iter().map(|s| (*s).to_owned()).collect(),
        country: country.to_owned(),
        terminated,
    }
}

fn practice(code: &str, parent: &str, closed: bool) -> PracticeRow {
    PracticeRow {
        code: code.to_owned(),
        parent_sub_icb: parent.to_owned(),
        closed,
    }
}

fn pair(gss: &str, ods: &str) -> CodeMapRow {
    CodeMapRow {
        gss: gss.to_owned(),
        ods: ods.to_owned(),
    }
}

fn assert_clean(report: &ReadReport, kind: FileKind, accepted: u64) {
    assert_eq!(report.kind, kind);
    assert_eq!(report.accepted, accepted, "{report:?}");
    assert_eq!(report.bad, 0, "{report:?}");
    assert!(report.bad_rows.is_empty());
}

/// The six §5.1 sample rows as every NSPL/ONSPD header generation must give them.
fn ons_sample_rows() -> Vec<PostcodeRow> {
    vec![
        row("CA87JG", &["E38000130"], &["E06000057"], "E92000001", false),
        row("B11AA", &["E38000258"], &["E08000025"], "E92000001", true),
        row(
            "BB186JR",
            &["E38000232"],
            &["E06000065"],
            "E92000001",
            false,
        ),
        row("BR11AA", &["E38000244"], &["E09000006"], "E92000001", false),
        row("CF11AA", &["W11000029"], &["W06000015"], "W92000004", true),
        row("BT11AA", &["ZC010"], &["N09000003"], "N92000002", false),
    ]
}

#[test]
fn nhspd_49_and_43_columns_give_ods_and_gss_codes() {
    let want = vec![
        row(
            "SW1A1AA",
            &["W2U3Z"],
            &["713", "E09000033"],
            "E92000001",
            false,
        ),
        row("M11AA", &["14L"], &["306", "E08000003"], "E92000001", true),
        row(
            "CF144XW",
            &["7A4"],
            &["052", "W06000015"],
            "W92000004",
            false,
        ),
    ];
    for name in ["nhspd-49.csv", "nhspd-43.csv"] {
        let (rows, report) = postcodes(&fixture(name));
        assert_clean(&report, FileKind::Nhspd, 3);
        assert_eq!(rows, want, "{name}");
    }
}

#[test]
fn every_nspl_and_onspd_header_generation_gives_the_same_rows() {
    let table = [
        ("nspl-may-2025.csv", FileKind::Nspl),
        ("nspl-aug-2025.csv", FileKind::Nspl),
        ("nspl-aug-2026.csv", FileKind::Nspl),
        ("nspl-2021-ccg.csv", FileKind::Nspl),
        ("onspd-feb-2023.csv", FileKind::Onspd),
        ("onspd-feb-2026.csv", FileKind::Onspd),
        ("nspl-bom-crlf.csv", FileKind::Nspl),
    ];
    for (name, kind) in table {
        let (rows, report) = postcodes(&fixture(name));
        assert_clean(&report, kind, 6);
        assert_eq!(report.skipped, 0, "{name}");
        assert_eq!(rows, ons_sample_rows(), "{name}");
    }
}

#[test]
fn bom_crlf_and_trailing_blank_lines_are_tolerated_in_every_shape() {
    for name in [
        "nhspd-49.csv",
        "epraccur.csv",
        "sicbl-names.csv",
        "nspl-may-2025.csv",
    ] {
        let plain = fixture(name);
        let text = String::from_utf8(plain.clone()).unwrap();
        let mut dressed = b"\xEF\xBB\xBF".to_vec();
        dressed.extend(text.replace('\n', "\r\n").into_bytes());
        dressed.extend(b"\r\n\r\n\n");
        let mut plain_batches = Vec::new();
        let plain_report = read_any(plain.as_slice(), 100, |b| {
            plain_batches.push(b);
            Ok::<_, Infallible>(())
        })
        .unwrap();
        let mut dressed_batches = Vec::new();
        let dressed_report = read_any(dressed.as_slice(), 100, |b| {
            dressed_batches.push(b);
            Ok::<_, Infallible>(())
        })
        .unwrap();
        assert_eq!(plain_report, dressed_report, "{name}");
        assert_eq!(plain_batches, dressed_batches, "{name}");
        assert_eq!(dressed_report.bad, 0, "{name}");
    }
}

#[test]
fn concatenated_per_area_files_skip_the_repeated_header() {
    let one = String::from_utf8(fixture("nspl-aug-2025.csv")).unwrap();
    let twice = format!("{one}{one}");
    let (rows, report) = postcodes(twice.as_bytes());
    assert_eq!(rows.len(), 12);
    assert_eq!(report.skipped, 1);
    assert_eq!(report.bad, 0);
}

#[test]
fn epraccur_gives_parent_and_closed_flag() {
    let (rows, report) = practices(&fixture("epraccur.csv"));
    assert_clean(&report, FileKind::Epraccur, 5);
    assert_eq!(
        rows,
        vec![
            practice("A81043", "00M", false),
            practice("A81044", "00K", false),
            practice("Y99001", "W2U3Z", true), // status C
            practice("Y99002", "15F", true),   // close date set
            practice("Y99003", "72Q", false),  // dormant is not closed
        ]
    );
}

#[test]
fn both_code_map_shapes_give_sub_icb_pairs() {
    let (rows, report) = code_map(&fixture("sicbl-names.csv"));
    assert_clean(&report, FileKind::SubIcbCodeMap, 4);
    assert_eq!(report.skipped, 1, "the Scottish board has no ODS code");
    assert_eq!(
        rows,
        vec![
            pair("E38000225", "15F"),
            pair("E38000130", "00L"),
            pair("E38000256", "W2U3Z"),
            pair("E38000244", "72Q"),
        ]
    );
    let (rows, report) = code_map(&fixture("sicbl-icb-nhser-lookup.csv"));
    assert_clean(&report, FileKind::SubIcbCodeMap, 2);
    assert_eq!(
        rows,
        vec![pair("E38000225", "15F"), pair("E38000244", "72Q")]
    );

    let older = "FID,LOC22CD,LOC22CDH,LOC22NM\n1,E38000225,15F,Leeds\n2,e38000130,00l,x\n";
    let (rows, _) = code_map(older.as_bytes());
    assert_eq!(
        rows,
        vec![pair("E38000225", "15F"), pair("E38000130", "00L")]
    );
}

#[test]
fn malformed_postcode_rows_are_reported_by_line_and_good_rows_kept() {
    let (rows, report) = postcodes(&fixture("nhspd-malformed.csv"));
    assert_eq!(report.accepted, 3);
    assert_eq!(report.bad, 2);
    let bad: Vec<(u64, &str)> = report
        .bad_rows
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(
        bad,
        vec![
            (2, "expected 49 columns, found 48"),
            (3, "column 2: not a valid postcode"),
        ]
    );
    let keys: Vec<&str> = rows.iter().map(|r| r.postcode.as_str()).collect();
    assert_eq!(keys, ["SW1A1AA", "CF144XW", "ZZ99ZZ"]);
    // Line 6 has no grid reference: no area codes, still a valid row.
    assert_eq!(rows[2], row("ZZ99ZZ", &[], &[], "", false));

    let header = String::from_utf8(fixture("nspl-may-2025.csv")).unwrap();
    let mut lines: Vec<String> = header.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replacen("B1  1AA,B1   1AA,B1 1AA", "B1,B1,B1", 1);
    lines[4] = lines[4].replacen(",E54000030", "", 1);
    let (rows, report) = postcodes(lines.join("\n").as_bytes());
    assert_eq!(rows.len(), 4);
    let bad: Vec<(u64, &str)> = report
        .bad_rows
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(
        bad,
        vec![
            (3, "column pcds: not a valid postcode"),
            (5, "expected 35 columns, found 34"),
        ]
    );
}

#[test]
fn malformed_practice_and_code_map_rows_name_the_column() {
    let text = String::from_utf8(fixture("epraccur.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[0] = lines[0].replacen("\"A81043\"", "\"a-1\"", 1);
    lines[1] = lines[1].replacen(",\"\"", "", 1);
    let (rows, report) = practices(lines.join("\r\n").as_bytes());
    assert_eq!(rows.len(), 3);
    assert_eq!(report.bad_rows[0].line, 1);
    assert_eq!(report.bad_rows[0].reason, "column 1: not an ODS code");
    assert_eq!(report.bad_rows[1].line, 2);
    assert_eq!(report.bad_rows[1].reason, "expected 27 columns, found 26");

    let lookup =
        "SICBL23CD,SICBL23CDH,SICBL23NM\nE3800022,15F,x\nE38000225,1-5,x\nE38000130,00L,x\n";
    let (rows, report) = code_map(lookup.as_bytes());
    assert_eq!(rows, vec![pair("E38000130", "00L")]);
    let bad: Vec<(u64, &str)> = report
        .bad_rows
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(
        bad,
        vec![
            (2, "column SICBL23CD: not a GSS code"),
            (3, "column SICBL23CDH: not an ODS sub-ICB code"),
        ]
    );
}

#[test]
fn wrong_files_are_refused_naming_what_was_expected() {
    let table = [
        ("random.csv", "a header row of 3 columns: name, age, email"),
        ("empty.csv", "an empty file"),
        ("data.json", "JSON, not CSV"),
    ];
    for (name, found) in table {
        let err =
            read_any(fixture(name).as_slice(), 10, |_| Ok::<_, Infallible>(())).expect_err(name);
        let ReadError::Refused(refusal) = &err else {
            panic!("{name}: {err:?}");
        };
        assert_eq!(refusal.found, found);
        let text = err.to_string();
        for format in [
            "NHSPD",
            "NSPL",
            "ONSPD",
            "epraccur",
            "SICBLnnCD",
            "nhs_number",
        ] {
            assert!(text.contains(format), "{name}: {text}");
        }
        assert!(!text.contains("Jane") && !text.contains("LS1"), "{text}");
    }
}

#[test]
fn a_reader_refuses_another_kind_of_file() {
    fn ok<T>(_: Vec<T>) -> Result<(), Infallible> {
        Ok(())
    }
    let texts = [
        read_postcodes(fixture("epraccur.csv").as_slice(), 1, ok).map(|_| ()),
        read_practices(fixture("nhspd-49.csv").as_slice(), 1, ok).map(|_| ()),
        read_code_map(fixture("nspl-aug-2025.csv").as_slice(), 1, ok).map(|_| ()),
    ]
    .map(|result| result.unwrap_err().to_string());
    let want = [
        (
            "file refused: expected a postcode file: NHSPD",
            "found epraccur (GP practices)",
        ),
        (
            "file refused: expected epraccur (headerless, 27 columns",
            "found NHSPD (NHS Postcode Directory)",
        ),
        (
            "file refused: expected a sub-ICB code lookup",
            "found NSPL (National Statistics Postcode Lookup)",
        ),
    ];
    for (text, (start, end)) in texts.iter().zip(want) {
        assert!(text.starts_with(start), "{text}");
        assert!(text.ends_with(end), "{text}");
    }
}

#[test]
fn batches_have_the_requested_size_and_a_failing_consumer_stops_the_read() {
    let bytes = fixture("nspl-aug-2025.csv");
    for (size, want) in [
        (1, vec![1; 6]),
        (4, vec![4, 2]),
        (6, vec![6]),
        (0, vec![1; 6]),
    ] {
        let mut sizes = Vec::new();
        read_postcodes(bytes.as_slice(), size, |b| {
            sizes.push(b.len());
            Ok::<_, Infallible>(())
        })
        .unwrap();
        assert_eq!(sizes, want, "batch size {size}");
    }
    let mut calls = 0;
    let err = read_postcodes(bytes.as_slice(), 2, |_| {
        calls += 1;
        if calls == 2 {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(matches!(err, ReadError::Sink(std::fmt::Error)));
    assert_eq!(calls, 2);
}

#[test]
fn bad_row_examples_are_capped_but_all_counted() {
    let mut text = String::from("SICBL23CD,SICBL23CDH,SICBL23NM\n");
    for _ in 0..150 {
        text.push_str("X,15F,x\n");
    }
    text.push_str("E38000225,15F,x\n");
    let (rows, report) = code_map(text.as_bytes());
    assert_eq!(rows.len(), 1);
    assert_eq!(report.bad, 150);
    assert_eq!(
        report.bad_rows.len(),
        nems_core::refdata::MAX_BAD_ROW_EXAMPLES
    );
    assert_eq!(report.bad_rows[99].line, 101);
    assert_eq!(
        report.to_string(),
        "SICBL_CODES: 1 rows accepted, 0 skipped, 150 bad"
    );
    assert_eq!(
        report.bad_rows[0].to_string(),
        "line 2: column SICBL23CD: not a GSS code"
    );
}

#[test]
fn a_reader_that_returns_one_byte_at_a_time_reads_the_same() {
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }
    let bytes = fixture("nspl-bom-crlf.csv");
    let mut rows = Vec::new();
    read_postcodes(Trickle(&bytes), 3, |b| {
        rows.extend(b);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    assert_eq!(rows, ons_sample_rows());
}

#[test]
fn read_any_hands_out_the_batch_type_of_the_detected_kind() {
    let table = [
        ("nhspd-49.csv", FileKind::Nhspd, "NHSPD", "postcodes"),
        ("onspd-feb-2026.csv", FileKind::Onspd, "ONSPD", "postcodes"),
        ("nspl-2021-ccg.csv", FileKind::Nspl, "NSPL", "postcodes"),
        ("epraccur.csv", FileKind::Epraccur, "EPRACCUR", "practices"),
        (
            "sicbl-names.csv",
            FileKind::SubIcbCodeMap,
            "SICBL_CODES",
            "code map",
        ),
        (
            "demographics.csv",
            FileKind::Demographics,
            "DEMOGRAPHICS",
            "patients",
        ),
    ];
    for (name, kind, format, batch) in table {
        let mut seen = Vec::new();
        let report = read_any(fixture(name).as_slice(), 1_000, |b| {
            seen.push(match b {
                Batch::Postcodes(_) => "postcodes",
                Batch::Practices(_) => "practices",
                Batch::CodeMap(_) => "code map",
                Batch::Patients(_) => "patients",
            });
            Ok::<_, Infallible>(())
        })
        .unwrap();
        assert_eq!(report.kind, kind, "{name}");
        assert_eq!(kind.format_name(), format);
        assert_eq!(seen, [batch], "{name}");
    }
    assert_eq!(
        FileKind::Nhspd.data_set(),
        Some(ReferenceDataSet::Postcodes)
    );
    assert_eq!(
        FileKind::Epraccur.data_set(),
        Some(ReferenceDataSet::Practices)
    );
    assert_eq!(
        FileKind::SubIcbCodeMap.data_set(),
        Some(ReferenceDataSet::CodeMap)
    );
    assert_eq!(FileKind::Demographics.data_set(), None);
}

/// Reads postcodes one byte at a time (the strict framing must not depend on where reads
/// end) and returns the rows and the report.
fn postcodes_trickled(bytes: &[u8]) -> (Vec<PostcodeRow>, ReadReport) {
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }
    let mut rows = Vec::new();
    let report = read_postcodes(Trickle(bytes), 3, |b| {
        rows.extend(b);
        Ok::<_, Infallible>(())
    })
    .unwrap();
    (rows, report)
}

fn bad_lines(report: &ReadReport) -> Vec<(u64, &str)> {
    report
        .bad_rows
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect()
}

#[test]
fn an_unclosed_quote_is_a_bad_row_and_the_next_line_is_read_on_its_own() {
    // NHSPD (quoted, headerless): line 2 loses the quote closing its last field, which a
    // lenient reader would run on into line 3 (losing CF14 4XW).
    let text = String::from_utf8(fixture("nhspd-49.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1].ends_with('"'));
    lines[1].pop();
    let file = lines.join("\n") + "\n";
    for (rows, report) in [
        postcodes(file.as_bytes()),
        postcodes_trickled(file.as_bytes()),
    ] {
        let keys: Vec<&str> = rows.iter().map(|r| r.postcode.as_str()).collect();
        assert_eq!(keys, ["SW1A1AA", "CF144XW"], "{report:?}");
        assert_eq!((report.accepted, report.bad), (2, 1));
        assert_eq!(
            bad_lines(&report),
            [(2, "unclosed quote at the end of the line")]
        );
    }
    // NSPL with bare rows (a header file): an opening quote never closed, in the middle of
    // a row and on the last line without a line end; CRLF line ends.
    let text = String::from_utf8(fixture("nspl-aug-2025.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replacen(",E08000025,", ",\"E08000025,", 1);
    let last = lines.len() - 1;
    lines[last] = lines[last].replacen(",N09000003,", ",\"N09000003,", 1);
    let file = lines.join("\r\n");
    for (rows, report) in [
        postcodes(file.as_bytes()),
        postcodes_trickled(file.as_bytes()),
    ] {
        let keys: Vec<&str> = rows.iter().map(|r| r.postcode.as_str()).collect();
        assert_eq!(
            keys,
            ["CA87JG", "BB186JR", "BR11AA", "CF11AA"],
            "{report:?}"
        );
        assert_eq!(
            bad_lines(&report),
            [
                (3, "unclosed quote at the end of the line"),
                (7, "unclosed quote at the end of the line"),
            ]
        );
        assert_eq!(rows[1], ons_sample_rows()[2], "the row after is intact");
    }
    // A literal quote inside a bare field, then a quoted field left open: the line's quotes
    // balance, so the CSV reader runs on to the end of the file. Every line taken is
    // counted bad; the totals still cover every line.
    let text = String::from_utf8(fixture("nspl-aug-2025.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] =
        lines[2]
            .replacen(",406649,", ",4066\"49,", 1)
            .replacen(",E38000258,", ",\"E38000258,", 1);
    let (rows, report) = postcodes(lines.join("\n").as_bytes());
    assert_eq!(rows, ons_sample_rows()[..1], "{report:?}");
    assert_eq!(report.accepted + report.bad, 6, "{report:?}");
    let lines: Vec<u64> = report.bad_rows.iter().map(|b| b.line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7]);
    assert_eq!(
        report.bad_rows[0].reason,
        "a quoted field runs past the end of its line"
    );
}

#[test]
fn codes_of_the_wrong_shape_are_refused_per_column() {
    // NSPL (Aug 2025 names): country, sub-ICB and local authority columns.
    let text = String::from_utf8(fixture("nspl-aug-2025.csv")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut bad = lines.clone();
    bad[1] = bad[1].replacen("\"E92000001\"", "\"XYZ\"", 1);
    bad[2] = bad[2].replacen(",E38000258,", ",E3800025,", 1);
    bad[3] = bad[3].replacen(",E06000065,", ",LEEDS,", 1);
    bad[4] = bad[4].replacen(",E92000001,", ",X92000001,", 1);
    let (rows, report) = postcodes(bad.join("\n").as_bytes());
    assert_eq!(
        bad_lines(&report),
        [
            (2, "column ctry25cd: not a GSS country code"),
            (
                3,
                "column sicbl24cd: not a sub-ICB code (GSS, or ODS of 3 or 5 characters)"
            ),
            (4, "column lad25cd: not a GSS code"),
            (5, "column ctry25cd: not a GSS country code"),
        ]
    );
    let keys: Vec<&str> = rows.iter().map(|r| r.postcode.as_str()).collect();
    assert_eq!(
        keys,
        ["CF11AA", "BT11AA"],
        "NI's ZC010 and Wales's W11 pass"
    );
    for (line, reason) in bad_lines(&report) {
        assert!(
            !reason.contains("XYZ") && !reason.contains("LEEDS"),
            "{line}: {reason}"
        );
    }

    // NHSPD: ODS local authority (column 8), GSS local authority (9), country (13),
    // sub-ICB (18).
    let text = String::from_utf8(fixture("nhspd-49.csv")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut bad = lines.clone();
    bad[0] = bad[0].replacen("\"713\"", "\"7130\"", 1);
    bad[1] = bad[1].replacen("\"14L\"", "\"14LL\"", 1);
    bad[2] = bad[2].replacen("\"W92000004\"", "\"WALES\"", 1);
    let extra = lines[0].replacen("\"E09000033\"", "\"E0900003\"", 1);
    bad.push(extra);
    bad.push(lines[2].clone());
    let (rows, report) = postcodes(bad.join("\n").as_bytes());
    assert_eq!(
        bad_lines(&report),
        [
            (
                1,
                "column 8: not a local authority code (ODS of 3 characters, or GSS)"
            ),
            (
                2,
                "column 18: not a sub-ICB code (GSS, or ODS of 3 or 5 characters)"
            ),
            (3, "column 13: not a GSS country code"),
            (4, "column 9: not a GSS code"),
        ]
    );
    assert_eq!(rows.len(), 1);

    // epraccur: the commissioner must be a sub-ICB ODS code.
    let text = String::from_utf8(fixture("epraccur.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[0] = lines[0].replacen("\"00M\"", "\"00MMMM\"", 1);
    let (rows, report) = practices(lines.join("\n").as_bytes());
    assert_eq!(
        bad_lines(&report),
        [(1, "column 15: not an ODS sub-ICB code")]
    );
    assert_eq!(rows.len(), 4);
}
