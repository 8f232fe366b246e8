//! `nems import` as an operator runs it: the real binary against a core on a non-default
//! address. `--help` says that an import replaces the data set; an import core refuses
//! exits non-zero with one line and leaves the set in force; `--check` changes nothing.

use std::path::Path;
use std::process::Output;

use nems_e2e::stack::TestStack;
use nems_proto::v1 as pb;

/// The NSPL header, August 2025 names.
const NSPL_HEADER: &str = "pcd7,pcd8,pcds,dointr,doterm,usrtypind,east1m,north1m,gridind,oa21cd,cty25cd,ced25cd,lad25cd,wd25cd,nhser24cd,ctry25cd,rgn25cd,pcon24cd,ttwa15cd,itl25cd,npark16cd,lsoa21cd,msoa21cd,wz11cd,sicbl24cd,bua24cd,ruc21ind,oac11ind,lat,long,lep21cd1,lep21cd2,pfa23cd,imd20ind,icb23cd";

/// A row in the shape of reference-data.md §5.1 for `CA8 7JG`, with the postcode changed.
fn row(outward: &str, inward: &str) -> String {
    let pcd7 = format!("{outward:<width$}{inward}", width = 7 - inward.len());
    let pcd8 = format!("{outward:<4} {inward}");
    let pcds = format!("{outward} {inward}");
    format!(
        r#""{pcd7}","{pcd8}","{pcds}","200006","","0","366033","564878","1","E00139875","E99999999","E99999999","E06000057","E05016114","E40000012","E92000001","E12000001","E14001285","E30000064","E06000057","E65000001","E01027484","E02005728","E33002161","E38000130","E63999999","RSN1","1B1",54.977349,-2.532223,"E37000025","","E23000007",17158,"E54000050""#
    )
}

async fn nems(args: &[&str], dir: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_nems"))
        .args(args)
        .current_dir(dir)
        .env_remove("NEMS_CONFIG")
        // As an operator's shell has them: no backtraces appended to errors.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("NEMS_LOG", "warn")
        .output()
        .await
        .expect("run nems")
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn import_help_says_an_import_replaces_the_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let output = nems(&["import", "--help"], dir.path()).await;
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "REPLACES the whole data set",
        "--check",
        "--force",
        "--max-shrink",
        "--max-bad-rows",
        ".zip",
    ] {
        assert!(
            help.contains(expected),
            "{expected:?} missing from:\n{help}"
        );
    }
}

#[tokio::test]
async fn a_refused_import_exits_non_zero_with_one_line_and_keeps_the_set() {
    let stack = TestStack::start().await;
    let url = format!("http://{}", stack.operator_addr);
    let dir = tempfile::tempdir().unwrap();
    let full: Vec<String> = (1..=9).map(|i| row("CA8", &format!("{i}JG"))).collect();
    std::fs::write(
        dir.path().join("nspl.csv"),
        format!("{NSPL_HEADER}\n{}\n", full.join("\n")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("header-only.csv"),
        format!("{NSPL_HEADER}\n"),
    )
    .unwrap();

    let args = |file: &'static str, extra: &'static [&'static str]| {
        let mut a = vec!["import", "--operator", url.as_str(), file];
        a.extend_from_slice(extra);
        a
    };
    let first = nems(&args("nspl.csv", &[]), dir.path()).await;
    assert!(first.status.success(), "{:?}", stderr_lines(&first));
    assert!(
        stderr_lines(&first)
            .iter()
            .any(|l| l.starts_with("import nspl.csv: 9 rows stored, 0 refused as malformed (NSPL")),
        "{:?}",
        stderr_lines(&first)
    );

    let refused = nems(&args("header-only.csv", &[]), dir.path()).await;
    assert!(!refused.status.success());
    let lines = stderr_lines(&refused);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("nems: import header-only.csv: import refused, the postcodes set in force (generation 1, 9 rows) is kept: the new postcodes set is empty"),
        "{lines:?}"
    );

    let checked = nems(&args("header-only.csv", &["--check"]), dir.path()).await;
    assert!(checked.status.success(), "{:?}", stderr_lines(&checked));
    let lines = stderr_lines(&checked);
    assert!(
        lines.iter().any(|l| l.contains(
            "check only, nothing changed: 0 rows would replace 9 (0 added, 9 removed, 0 changed)"
        )),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("would be refused")),
        "{lines:?}"
    );

    let status = stack
        .operator()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.reference_generations, [1, 0, 0]);

    let forced = nems(&args("header-only.csv", &["--force"]), dir.path()).await;
    assert!(forced.status.success(), "{:?}", stderr_lines(&forced));
    assert!(
        stderr_lines(&forced)
            .iter()
            .any(|l| l.contains("forced despite: the new postcodes set is empty")),
        "{:?}",
        stderr_lines(&forced)
    );
    let status = stack
        .operator()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.reference_generations, [2, 0, 0]);
    stack.shutdown().await;
}
