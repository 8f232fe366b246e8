//! Reference data through the real import path (`nems_cli::import::import` streaming to
//! core's `ImportReferenceData` over gRPC, into redb), observed with `LookupArea`,
//! `GetStatus` and matching:
//!
//! - a second postcode file (here of another official shape) replaces the first
//!   completely, and the generation increments;
//! - an import whose file fails to read part-way changes nothing;
//! - a file of no known shape is refused with a message naming the expected formats;
//! - malformed rows are counted and reported with their line numbers while the good rows
//!   load (when the bad-row limit allows);
//! - an import that would empty or shrink a set, or has too many malformed rows, is refused
//!   with the set in force kept, unless forced; a check changes nothing;
//! - unclosed quotes and codes of the wrong shape are bad rows, the next line read afresh;
//! - several files, a folder and a zip as published import as one set in one generation,
//!   and a lookup shows the sub-ICB location in both its ODS and GSS forms;
//! - the embedded synthetic data set (`core/data/synthetic/`) imports with zero bad rows,
//!   loads through the launcher's own start-up path, and makes generic rules work out of
//!   the box.

use std::io::{Read, Write};
use std::path::Path;

use nems_cli::import::{self, Summary};
use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;

use crate::generic_support::*;

const FORCE: import::Options = import::Options {
    check: false,
    force: true,
    max_shrink_percent: None,
    max_bad_row_percent: None,
};

const CHECK: import::Options = import::Options {
    check: true,
    force: false,
    max_shrink_percent: None,
    max_bad_row_percent: None,
};

/// Imports `bytes` as one file named `name` with `options` (the `nems import` path).
async fn import_opts(
    stack: &TestStack,
    name: &str,
    bytes: impl AsRef<[u8]>,
    options: import::Options,
) -> anyhow::Result<Summary> {
    let source = import::Source::reader(name, std::io::Cursor::new(bytes.as_ref().to_vec()), None);
    import::import_one(source, &operator_url(stack), None, &options, false).await
}

#[tokio::test]
async fn generic_refdata_a_second_postcode_file_replaces_the_first_completely() {
    let stack = TestStack::start().await;
    assert_eq!(status(&stack).await.reference_generations, [0, 0, 0]);
    import_clean(&stack, "nhg-areas.csv", NHSPD_AREAS).await;
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    let ne61 = lookup_postcode(&stack, "ne61 1aa").await.expect("NE61 1AA");
    assert_eq!(ne61.sub_icb, ["00L"]);
    let ls1 = lookup_postcode(&stack, "LS1  4AP").await.expect("LS1 4AP");
    assert_eq!(
        (ls1.sub_icb.as_slice(), ls1.local_authority.as_slice()),
        (
            &["15F".to_string()][..],
            &["409".to_string(), "E08000035".to_string()][..]
        )
    );
    assert!(lookup_postcode(&stack, "LS9 7TF").await.is_none());

    // Two rows for eight: refused by the shrink limit unless forced.
    let error = import_bytes(&stack, "nspl-replacement.csv", NSPL_REPLACEMENT)
        .await
        .expect_err("a 75 % shrink is refused");
    assert!(
        format!("{error:#}").contains("would shrink from 8 to 2 rows (75.0 %)"),
        "{error:#}"
    );
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    let summary = import_opts(&stack, "nspl-replacement.csv", NSPL_REPLACEMENT, FORCE)
        .await
        .expect("NSPL import");
    assert_eq!(
        (summary.kind.as_str(), summary.rows, summary.bad),
        ("NSPL", 2, 0)
    );
    assert!(
        summary.applied && summary.refusals.len() == 1,
        "{summary:?}"
    );
    assert_eq!(status(&stack).await.reference_generations, [2, 0, 0]);
    for gone in ["NE61 1AA", "LS2 7EW", "CF14 4XW", "LS1 1ZZ"] {
        assert!(
            lookup_postcode(&stack, gone).await.is_none(),
            "{gone} was only in the first file"
        );
    }
    let ls1 = lookup_postcode(&stack, "LS1 4AP").await.expect("LS1 4AP");
    assert_eq!(
        (ls1.sub_icb.as_slice(), ls1.local_authority.as_slice()),
        (
            &["E38000130".to_string()][..],
            &["E08000035".to_string()][..]
        ),
        "no trace of the first file's row"
    );
    assert!(lookup_postcode(&stack, "LS9 7TF").await.is_some());
    stack.shutdown().await;
}

/// A file that yields `bytes` and then fails.
struct FailsPartWay {
    bytes: std::io::Cursor<Vec<u8>>,
}

impl Read for FailsPartWay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.bytes.read(buf)? {
            0 => Err(std::io::Error::other("the disk went away")),
            n => Ok(n),
        }
    }
}

/// NHSPD rows for `n` distinct `ZZ` postcodes, in the shape of the `LS1 4AP` row.
fn generated_nhspd(n: usize) -> (Vec<u8>, String) {
    let template = std::str::from_utf8(NHSPD_AREAS)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let letters = b"ABDEFGHJLN";
    let mut out = String::new();
    let mut first = String::new();
    for i in 0..n {
        let outward = format!("ZZ{}", i / 100 + 1);
        let inward = format!(
            "{}{}{}",
            (i / 10) % 10,
            char::from(letters[i % 10]),
            char::from(letters[(i / 10) % 10])
        );
        let pcds = format!("{outward} {inward}");
        if i == 0 {
            first.clone_from(&pcds);
        }
        let row = template.replacen(
            "\"LS1  4AP\",\"LS1 4AP\"",
            &format!("\"{outward:<4} {inward}\",\"{pcds}\""),
            1,
        );
        out.push_str(&row);
        out.push('\n');
    }
    (out.into_bytes(), first)
}

#[tokio::test]
async fn generic_refdata_an_import_that_fails_part_way_changes_nothing() {
    let stack = TestStack::start().await;
    import_clean(&stack, "nhg-areas.csv", NHSPD_AREAS).await;
    // More rows than one batch, so some reach core before the read fails.
    let (bytes, first) = generated_nhspd(6_000);
    let reader = FailsPartWay {
        bytes: std::io::Cursor::new(bytes),
    };
    let outcome =
        nems_cli::import::import(reader, "nhg-broken.csv", &operator_url(&stack), false).await;
    let error = outcome.expect_err("a read failure fails the import");
    assert!(format!("{error:#}").contains("read failed"), "{error:#}");
    assert_eq!(
        status(&stack).await.reference_generations,
        [1, 0, 0],
        "the set in force is still the first"
    );
    assert!(
        lookup_postcode(&stack, &first).await.is_none(),
        "no row of the failed file is in force"
    );
    assert!(lookup_postcode(&stack, "NE61 1AA").await.is_some());
    // The next import still works.
    import_clean(&stack, "nhg-areas.csv", NHSPD_AREAS).await;
    assert_eq!(status(&stack).await.reference_generations, [2, 0, 0]);
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_refdata_a_file_of_the_wrong_shape_is_refused() {
    let stack = TestStack::start().await;
    import_clean(&stack, "nhg-areas.csv", NHSPD_AREAS).await;
    let error = import_bytes(&stack, "clinic-list.csv", WRONG_SHAPE)
        .await
        .expect_err("refused");
    let text = format!("{error:#}");
    for expected in [
        "clinic-list.csv",
        "NHSPD",
        "NSPL or ONSPD",
        "epraccur",
        "sub-ICB code lookup",
        "demographics CSV",
        "a header row of 3 columns: patient_name, date_of_visit, clinic",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from: {text}");
    }
    assert!(!text.contains("A Patient"), "no row values echoed: {text}");
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    assert!(lookup_postcode(&stack, "LS1 4AP").await.is_some());
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_refdata_malformed_rows_are_reported_by_line_while_good_rows_load() {
    let stack = TestStack::start().await;
    // Two bad rows of five are over the default 1 % limit: refused, nothing in force.
    let error = import_bytes(&stack, "nhg-malformed.csv", NHSPD_MALFORMED)
        .await
        .expect_err("40 % malformed");
    assert!(
        format!("{error:#}").contains("2 of 5 rows read (40.0 %) were malformed"),
        "{error:#}"
    );
    assert_eq!(status(&stack).await.reference_generations, [0, 0, 0]);
    assert!(lookup_postcode(&stack, "LS1 4AP").await.is_none());
    let lenient = import::Options {
        max_bad_row_percent: Some(50.0),
        ..Default::default()
    };
    let summary = import_opts(&stack, "nhg-malformed.csv", NHSPD_MALFORMED, lenient)
        .await
        .expect("imported despite bad rows");
    assert_eq!((summary.rows, summary.bad), (3, 2), "{summary:?}");
    let lines: Vec<u64> = summary.bad_rows.iter().map(|b| b.line).collect();
    assert_eq!(lines, [2, 4], "{summary:?}");
    assert!(
        summary.bad_rows[0].reason.contains("not a valid postcode"),
        "{summary:?}"
    );
    assert!(
        summary.bad_rows[1]
            .reason
            .contains("expected 49 columns, found 40"),
        "{summary:?}"
    );
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    for good in ["LS1 4AP", "LS6 2AB", "NE46 1BT"] {
        assert!(lookup_postcode(&stack, good).await.is_some(), "{good}");
    }
    for bad in ["LS2 7EW", "NE61 1AA"] {
        assert!(lookup_postcode(&stack, bad).await.is_none(), "{bad}");
    }
    stack.shutdown().await;
}

const SYNTHETIC: [(&str, &[u8], u64); 4] = [
    (
        "nhg-synthetic.csv",
        include_bytes!("../../core/data/synthetic/nhg-synthetic.csv"),
        31,
    ),
    (
        "epraccur-synthetic.csv",
        include_bytes!("../../core/data/synthetic/epraccur-synthetic.csv"),
        9,
    ),
    // Five GSS ↔ ODS pairs, stored in both directions.
    (
        "sicbl-codes-synthetic.csv",
        include_bytes!("../../core/data/synthetic/sicbl-codes-synthetic.csv"),
        10,
    ),
    (
        "demographics-synthetic.csv",
        include_bytes!("../../core/data/synthetic/demographics-synthetic.csv"),
        11,
    ),
];

#[tokio::test]
async fn generic_refdata_the_synthetic_data_set_imports_cleanly_and_matches() {
    let stack = TestStack::start().await;
    for (name, bytes, rows) in SYNTHETIC {
        assert_eq!(import_clean(&stack, name, bytes).await, rows, "{name}");
    }
    let s = status(&stack).await;
    assert_eq!(
        (s.reference_generations.as_slice(), s.patients),
        (&[1, 1, 1][..], 11)
    );
    subscribe(
        &stack,
        MBX1,
        &generic("CHO_POSTCODE_CCG", "15F", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX2,
        &generic("CHO_GP_CCG", "E38000225", "vaccinations-1", ""),
    )
    .await;
    subscribe(
        &stack,
        MBX3,
        &generic("UHV_POSTCODE_LACODE", "713", "vaccinations-1", ""),
    )
    .await;
    // Synthetic patients, known to the store only: LS1 4AP at B86001; SW1A 1AA at E87001;
    // the sensitive one.
    let leeds = vaccination("9990000018", "1984-03-02", None, None);
    let westminster = vaccination("9990000042", "1970-01-01", None, None);
    let sensitive = vaccination("9990000069", "1970-01-01", Some("LS1 4AP"), None);
    for event in [&leeds, &westminster, &sensitive] {
        publish(&stack, event).await;
    }
    let delivered = settled(&stack).await;
    assert_eq!(mailboxes_of(&delivered, &leeds), set(&[MBX1, MBX2]));
    assert_eq!(mailboxes_of(&delivered, &westminster), set(&[MBX3]));
    assert_eq!(mailboxes_of(&delivered, &sensitive), set(&[]));
    assert_eq!(suppressed(&stack, MBX1).await, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_refdata_the_launcher_loads_the_embedded_data_set_once() {
    let stack = TestStack::start().await;
    let url = operator_url(&stack);
    nems_cli::embedded::load_reference_data(&url, None)
        .await
        .expect("embedded data loads");
    let s = status(&stack).await;
    assert_eq!(
        (s.reference_generations.as_slice(), s.patients),
        (&[1, 1, 1][..], 11)
    );
    subscribe(
        &stack,
        MBX1,
        &generic("GP_GP_GP", "B86002", "vaccinations-1", ""),
    )
    .await;
    // 9990000026 is registered at B86002 in the synthetic demographics.
    let event = vaccination("9990000026", "2019-06-15", None, None);
    publish(&stack, &event).await;
    let delivered = settled(&stack).await;
    assert_eq!(mailboxes_of(&delivered, &event), set(&[MBX1]));
    // A second start with data in the store imports nothing.
    nems_cli::embedded::load_reference_data(&url, None)
        .await
        .expect("second start");
    let s = status(&stack).await;
    assert_eq!(
        (s.reference_generations.as_slice(), s.patients),
        (&[1, 1, 1][..], 11)
    );
    stack.shutdown().await;
}

// === Imports that cannot destroy reference data ===

/// The NSPL header, August 2025 names (reference-data.md §5.1).
const NSPL_HEADER: &str = "pcd7,pcd8,pcds,dointr,doterm,usrtypind,east1m,north1m,gridind,oa21cd,cty25cd,ced25cd,lad25cd,wd25cd,nhser24cd,ctry25cd,rgn25cd,pcon24cd,ttwa15cd,itl25cd,npark16cd,lsoa21cd,msoa21cd,wz11cd,sicbl24cd,bua24cd,ruc21ind,oac11ind,lat,long,lep21cd1,lep21cd2,pfa23cd,imd20ind,icb23cd";

/// One quoted NSPL row in the §5.1 shape (35 columns, lat/long bare) for `pcds`, with
/// local authority `lad`, country `ctry` and sub-ICB `sicbl` (GSS).
fn nspl_row(pcds: &str, lad: &str, ctry: &str, sicbl: &str) -> String {
    let (outward, inward) = pcds.split_once(' ').expect("pcds has a space");
    let pcd7 = format!("{outward:<width$}{inward}", width = 7 - inward.len());
    let pcd8 = format!("{outward:<4} {inward}");
    let quoted = |v: &str| format!("\"{v}\"");
    let mut f: Vec<String> = [
        pcd7.as_str(),
        &pcd8,
        pcds,
        "200006",
        "",
        "0",
        "366033",
        "564878",
        "1",
        "E00139875",
        "E99999999",
        "E99999999",
        lad,
        "E05016114",
        "E40000012",
        ctry,
        "E12000001",
        "E14001285",
        "E30000064",
        lad,
        "E65000001",
        "E01027484",
        "E02005728",
        "E33002161",
        sicbl,
        "E63999999",
        "RSN1",
        "1B1",
    ]
    .iter()
    .map(|v| quoted(v))
    .collect();
    f.push("54.977349".into());
    f.push("-2.532223".into());
    for v in ["E37000025", "", "E23000007"] {
        f.push(quoted(v));
    }
    f.push("17158".into());
    f.push(quoted("E54000054"));
    assert_eq!(f.len(), 35);
    f.join(",")
}

/// Postcodes `AREA1 1AA` … of one area, for a per-area file.
fn area_postcodes(area: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{area}{} {}AA", i / 9 + 1, i % 9 + 1))
        .collect()
}

/// An NSPL file (header and rows) for Leeds (`E38000225`, `E08000035`) postcodes.
fn nspl_file(postcodes: &[String]) -> String {
    let mut out = format!("{NSPL_HEADER}\r\n");
    for p in postcodes {
        out.push_str(&nspl_row(p, "E08000035", "E92000001", "E38000225"));
        out.push_str("\r\n");
    }
    out
}

fn error_text(result: anyhow::Result<Summary>) -> String {
    format!("{:#}", result.expect_err("refused"))
}

#[tokio::test]
async fn generic_refdata_an_empty_or_all_malformed_file_is_refused_and_the_set_kept() {
    let stack = TestStack::start().await;
    let postcodes = area_postcodes("LS", 10);
    import_opts(
        &stack,
        "nspl.csv",
        nspl_file(&postcodes),
        import::Options::default(),
    )
    .await
    .expect("first import");
    let kept = "import refused, the postcodes set in force (generation 1, 10 rows) is kept";
    // Header only: a check says it would be refused; an import is refused.
    let checked = import_opts(&stack, "nspl-empty.csv", NSPL_HEADER, CHECK)
        .await
        .expect("a check answers");
    assert!(!checked.applied, "{checked:?}");
    assert_eq!(checked.changes, Some((0, 10, 0)));
    assert!(checked.refusals[0].contains("is empty"), "{checked:?}");
    let text = error_text(
        import_opts(
            &stack,
            "nspl-empty.csv",
            format!("{NSPL_HEADER}\n"),
            Default::default(),
        )
        .await,
    );
    assert!(text.contains(kept), "{text}");
    assert!(
        text.contains("the new postcodes set is empty (the set in force has 10 rows)"),
        "{text}"
    );
    // Every row malformed (postcodes that are not postcodes).
    let bad = format!(
        "{NSPL_HEADER}\n{}\n{}\n",
        nspl_row("NOT APC", "E08000035", "E92000001", "E38000225"),
        nspl_row("LS1 4AP", "E08000035", "XYZ", "E38000225"),
    )
    .replacen("\"NOT APC\",", "\"NOWHERE\",", 3);
    let text = error_text(import_opts(&stack, "nspl-bad.csv", bad, Default::default()).await);
    assert!(text.contains(kept), "{text}");
    assert!(
        text.contains("2 of 2 rows read (100.0 %) were malformed"),
        "{text}"
    );
    assert!(!text.contains("LS1"), "no values in the refusal: {text}");
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    for p in &postcodes {
        assert!(
            lookup_postcode(&stack, p).await.is_some(),
            "{p} still in force"
        );
    }
    // The same refusal comes to any gRPC caller: a bare stream with a header and no rows.
    let header = pb::ImportReferenceDataRequest {
        item: Some(pb::import_reference_data_request::Item::Header(
            pb::ImportHeader {
                data_set: pb::ReferenceDataSet::Postcodes.into(),
                format: "NSPL".into(),
                source: "grpc".into(),
                ..Default::default()
            },
        )),
    };
    let status_err = stack
        .operator()
        .import_reference_data(tokio_stream::iter([header]))
        .await
        .expect_err("refused over gRPC too");
    assert_eq!(status_err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_refdata_three_good_and_three_bad_rows_are_refused_unless_forced() {
    let stack = TestStack::start().await;
    let postcodes = area_postcodes("LS", 10);
    import_opts(
        &stack,
        "nspl.csv",
        nspl_file(&postcodes),
        Default::default(),
    )
    .await
    .expect("first import");
    // Three good rows (one right after an unclosed quote, which must not be swallowed) and
    // three bad: a bad postcode, an unclosed quote, a country of the wrong shape.
    let unclosed = nspl_row("BD1 1AA", "E08000032", "E92000001", "E38000232");
    let unclosed = unclosed.strip_suffix('"').expect("quoted last field");
    let file = [
        NSPL_HEADER.to_string(),
        nspl_row("BD1 2AA", "E08000032", "E92000001", "E38000232"),
        nspl_row("LS1 4AP", "E08000035", "E92000001", "E38000225")
            .replace("LS1 4AP", "NOWHERE")
            .replace("LS1  4AP", "NOWHERE"),
        unclosed.to_string(),
        nspl_row("BD1 3AA", "E08000032", "E92000001", "E38000232"),
        nspl_row("BD1 4AA", "E08000032", "XYZ", "E38000232"),
        nspl_row("BD1 5AA", "E08000032", "E92000001", "E38000232"),
    ]
    .join("\n");
    let text = error_text(import_opts(&stack, "nspl-half.csv", &file, Default::default()).await);
    assert!(
        text.contains("would shrink from 10 to 3 rows (70.0 %)"),
        "{text}"
    );
    assert!(
        text.contains("3 of 6 rows read (50.0 %) were malformed"),
        "{text}"
    );
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    assert!(lookup_postcode(&stack, "BD1 3AA").await.is_none());
    assert!(lookup_postcode(&stack, &postcodes[9]).await.is_some());

    let summary = import_opts(&stack, "nspl-half.csv", &file, FORCE)
        .await
        .expect("forced");
    assert_eq!((summary.rows, summary.bad, summary.applied), (3, 3, true));
    assert_eq!(summary.refusals.len(), 2, "{summary:?}");
    let bad: Vec<(u64, &str)> = summary
        .bad_rows
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(
        bad,
        [
            (3, "column pcds: not a valid postcode"),
            (4, "unclosed quote at the end of the line"),
            (6, "column ctry25cd: not a GSS country code"),
        ]
    );
    assert_eq!(status(&stack).await.reference_generations, [2, 0, 0]);
    for good in ["BD1 2AA", "BD1 3AA", "BD1 5AA"] {
        let row = lookup_postcode(&stack, good).await.expect(good);
        assert_eq!(row.country, "E92000001");
    }
    assert!(
        lookup_postcode(&stack, "BD1 4AA").await.is_none(),
        "country=XYZ not stored"
    );
    assert!(
        lookup_postcode(&stack, &postcodes[0]).await.is_none(),
        "replaced"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_refdata_one_per_area_file_does_not_replace_the_country() {
    let stack = TestStack::start().await;
    let (ab, ls) = (area_postcodes("AB", 4), area_postcodes("LS", 16));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let ab_file = write("NSPL_AUG_2025_UK_AB.csv", nspl_file(&ab));
    let ls_file = write("NSPL_AUG_2025_UK_LS.csv", nspl_file(&ls));
    let url = operator_url(&stack);
    let mut out = Vec::new();
    // Two files on the command line make one set, one generation.
    let summaries = import::import_paths(
        &[ab_file.clone(), ls_file.clone()],
        &url,
        None,
        &Default::default(),
        false,
        &mut out,
    )
    .await
    .expect("both areas");
    assert_eq!(summaries.len(), 1);
    assert_eq!((summaries[0].rows, summaries[0].files), (20, 2));
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    // One area alone would shrink the country by 80 %: refused, one line.
    let mut out = Vec::new();
    let error = import::import_paths(
        std::slice::from_ref(&ab_file),
        &url,
        None,
        &Default::default(),
        false,
        &mut out,
    )
    .await
    .expect_err("refused");
    let text = format!("{error:#}");
    assert!(
        text.starts_with("import NSPL_AUG_2025_UK_AB.csv: import refused"),
        "{text}"
    );
    assert!(
        text.contains("would shrink from 20 to 4 rows (80.0 %), more than the 10 % allowed"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    // A check reports the change and keeps everything.
    let mut out = Vec::new();
    let checked = import::import_paths(
        std::slice::from_ref(&ab_file),
        &url,
        None,
        &CHECK,
        false,
        &mut out,
    )
    .await
    .expect("a check succeeds");
    assert_eq!(checked[0].changes, Some((0, 16, 0)));
    assert!(!checked[0].applied);
    let report = String::from_utf8(out).unwrap();
    assert!(
        report.contains(
            "check only, nothing changed: 4 rows would replace 20 (0 added, 16 removed, 0 changed)"
        ),
        "{report}"
    );
    assert!(
        report.contains("the import would be refused: the postcodes set would shrink"),
        "{report}"
    );
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 0]);
    for p in ab.iter().chain(&ls) {
        assert!(lookup_postcode(&stack, p).await.is_some(), "{p}");
    }
    // A limit given with the import lets a smaller shrink through.
    let lenient = import::Options {
        max_shrink_percent: Some(85.0),
        ..Default::default()
    };
    let mut out = Vec::new();
    import::import_paths(&[ab_file], &url, None, &lenient, false, &mut out)
        .await
        .expect("within the limit given");
    assert_eq!(status(&stack).await.reference_generations, [2, 0, 0]);
    assert!(lookup_postcode(&stack, &ls[0]).await.is_none());
    stack.shutdown().await;
}

/// The sub-ICB names-and-codes lookup of an NSPL zip's `Documents/` (§5.2).
const SICBL_NAMES: &str = "SICBL23CD,SICBL23CDH,SICBL23NM\r\nE38000225,15F,NHS West Yorkshire ICB - 15F\r\nE38000232,02W,NHS West Yorkshire ICB - 02W\r\n";

/// An NSPL release laid out as published: the whole file and per-area files under `Data/`,
/// lookups under `Documents/` (one of no known shape), a user guide.
fn release_files(ab: &[String], ls: &[String], whole: bool) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        (
            "Data/multi_csv/NSPL_AUG_2025_UK_AB.csv".to_string(),
            nspl_file(ab).into_bytes(),
        ),
        (
            "Data/multi_csv/NSPL_AUG_2025_UK_LS.csv".to_string(),
            nspl_file(ls).into_bytes(),
        ),
        (
            "Documents/Sub_ICB Location and Local Health Board names and codes UK as at 04_23.csv"
                .to_string(),
            SICBL_NAMES.as_bytes().to_vec(),
        ),
        (
            "Documents/Country names and codes UK as at 08_12.csv".to_string(),
            b"CTRY12CD,CTRY12CDO,CTRY12NM\nE92000001,921,England\n".to_vec(),
        ),
        (
            "User Guide/NSPL User Guide Aug 2025.pdf".to_string(),
            b"%PDF-1.4".to_vec(),
        ),
    ];
    if whole {
        let all: Vec<String> = ab.iter().chain(ls).cloned().collect();
        files.push((
            "Data/NSPL_AUG_2025_UK.csv".to_string(),
            nspl_file(&all).into_bytes(),
        ));
    }
    files
}

fn write_folder(root: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn write_zip(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[tokio::test]
async fn generic_refdata_a_folder_and_a_zip_as_published_import_as_one_set() {
    let stack = TestStack::start().await;
    let url = operator_url(&stack);
    let (ab, ls) = (area_postcodes("AB", 5), area_postcodes("LS", 5));
    let dir = tempfile::tempdir().unwrap();

    // A folder of per-area files: both areas, one postcode generation, plus the code map.
    let folder = dir.path().join("NSPL_AUG_2025");
    write_folder(&folder, &release_files(&ab, &ls, false));
    let mut out = Vec::new();
    let summaries =
        import::import_paths(&[folder], &url, None, &Default::default(), false, &mut out)
            .await
            .expect("folder");
    let report = String::from_utf8(out).unwrap();
    assert_eq!(
        summaries
            .iter()
            .map(|s| (s.kind.as_str(), s.rows, s.files))
            .collect::<Vec<_>>(),
        [("NSPL", 10, 2), ("SICBL_CODES", 4, 1)],
        "{report}"
    );
    assert!(report.contains("left out Documents/Country names and codes UK as at 08_12.csv: not a reference data file"), "{report}");
    assert_eq!(status(&stack).await.reference_generations, [1, 0, 1]);

    // The zip as published: the whole file is read and the per-area copies left out.
    let more_ls = area_postcodes("LS", 7);
    let zip_path = dir.path().join("NSPL_AUG_2025_UK.zip");
    write_zip(&zip_path, &release_files(&ab, &more_ls, true));
    let mut out = Vec::new();
    let summaries = import::import_paths(
        &[zip_path],
        &url,
        None,
        &Default::default(),
        false,
        &mut out,
    )
    .await
    .expect("zip");
    let report = String::from_utf8(out).unwrap();
    assert_eq!((summaries[0].rows, summaries[0].files), (12, 1), "{report}");
    assert!(
        report.contains("left out Data/multi_csv/NSPL_AUG_2025_UK_AB.csv: a per-area file"),
        "{report}"
    );
    assert!(
        report.contains(
            "import Data/NSPL_AUG_2025_UK.csv: 12 rows stored, 0 refused as malformed (NSPL"
        ),
        "{report}"
    );
    assert_eq!(status(&stack).await.reference_generations, [2, 0, 2]);
    for p in ab.iter().chain(&more_ls) {
        assert!(lookup_postcode(&stack, p).await.is_some(), "{p}");
    }

    // `nems admin lookup` shows the sub-ICB location in both forms.
    let lookup = |key| {
        let mut operator = stack.operator();
        async move {
            operator
                .lookup_area(pb::LookupAreaRequest { key: Some(key) })
                .await
                .expect("lookup")
                .into_inner()
        }
    };
    use pb::lookup_area_request::Key;
    let answer = lookup(Key::Postcode(ab[0].clone())).await;
    assert_eq!(answer.sub_icb_codes, ["E38000225", "15F"]);
    assert_eq!(
        nems_cli::admin::lookup_lines(&answer),
        [
            "postcode=AB11AA sub_icb=E38000225,15F local_authority=E08000035 country=E92000001 terminated=false"
        ]
    );
    import_clean(&stack, "epraccur-areas.csv", EPRACCUR_AREAS).await;
    let answer = lookup(Key::Practice("B86001".into())).await;
    assert_eq!(
        nems_cli::admin::lookup_lines(&answer),
        ["practice=B86001 parent_sub_icb=15F,E38000225 closed=false"]
    );
    let answer = lookup(Key::Practice("W97001".into())).await;
    assert_eq!(
        answer.sub_icb_codes,
        ["7A4"],
        "no pair for 7A4 in this code map"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn generic_refdata_imports_are_audited_with_their_time_outcome_and_operator() {
    let stack = TestStack::start().await;
    let started = time::OffsetDateTime::now_utc().unix_timestamp();
    let postcodes = area_postcodes("LS", 10);
    import_opts(
        &stack,
        "nspl.csv",
        nspl_file(&postcodes),
        Default::default(),
    )
    .await
    .expect("first import");
    import_opts(&stack, "nspl-empty.csv", NSPL_HEADER, Default::default())
        .await
        .expect_err("refused");
    import_opts(&stack, "nspl-empty.csv", NSPL_HEADER, CHECK)
        .await
        .expect("a check");
    import_opts(&stack, "nspl-empty.csv", NSPL_HEADER, FORCE)
        .await
        .expect("forced");
    let records = stack
        .operator()
        .list_audit(pb::ListAuditRequest {
            action: "import.reference-data".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .records;
    let finished = time::OffsetDateTime::now_utc().unix_timestamp();
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.resource_id.as_str(), r.outcome.as_str(), r.user.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("nspl.csv", "ok", "operator@127.0.0.1"),
            ("nspl-empty.csv", "refused", "operator@127.0.0.1"),
            ("nspl-empty.csv", "forced", "operator@127.0.0.1"),
        ],
        "a check changes nothing and is not audited"
    );
    for r in &records {
        let at = r.at.as_ref().expect("time").seconds;
        assert!(
            (started..=finished).contains(&at),
            "{at} not in {started}..={finished}"
        );
    }
    // The set in force has an age in /metrics (seconds since it was switched in); the
    // practices were never imported here, so they have none.
    let metrics = nems_runtime::ops::encode();
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"nems_refdata_age_seconds{set="postcodes"} "#))
        .unwrap_or_else(|| panic!("no postcode age in {metrics}"));
    let age: i64 = age.trim().parse().unwrap();
    assert!((0..=finished - started + 1).contains(&age), "{age}");
    assert!(!metrics.contains(r#"nems_refdata_age_seconds{set="practices"}"#));
    stack.shutdown().await;
}
