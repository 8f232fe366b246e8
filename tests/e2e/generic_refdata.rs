//! Reference data through the real import path (`nems_cli::import::import` streaming to
//! core's `ImportReferenceData` over gRPC, into redb), observed with `LookupArea`,
//! `GetStatus` and matching:
//!
//! - a second postcode file (here of another official shape) replaces the first
//!   completely, and the generation increments;
//! - an import whose file fails to read part-way changes nothing;
//! - a file of no known shape is refused with a message naming the expected formats;
//! - malformed rows are counted and reported with their line numbers while the good rows
//!   load;
//! - the embedded synthetic data set (`core/data/synthetic/`) imports with zero bad rows,
//!   loads through the launcher's own start-up path, and makes generic rules work out of
//!   the box.

use std::io::Read;

use nems_e2e::stack::TestStack;

use crate::generic_support::*;

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

    let summary = import_bytes(&stack, "nspl-replacement.csv", NSPL_REPLACEMENT)
        .await
        .expect("NSPL import");
    assert_eq!(
        (summary.kind.as_str(), summary.rows, summary.bad),
        ("NSPL", 2, 0)
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
    let summary = import_bytes(&stack, "nhg-malformed.csv", NHSPD_MALFORMED)
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
