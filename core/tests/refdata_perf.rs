//! Reading a full-size NHSPD-shaped file: rows per second and peak memory (VmHWM).
//!
//! Ignored by default because it needs a 1.3 GB file. Generate it, then run in release:
//!
//! ```text
//! cargo run --release -p nems-core --example gen_postcodes -- /tmp/nhg-2.7m.csv 2700000
//! cargo test --release -p nems-core --test refdata_perf -- --ignored --nocapture
//! ```

use std::convert::Infallible;
use std::fs::File;
use std::time::Instant;

use nems_core::refdata::{DEFAULT_BATCH_SIZE, FileKind, read_postcodes};

const PATH: &str = "/tmp/nhg-2.7m.csv";

#[test]
#[ignore = "needs /tmp/nhg-2.7m.csv from the gen_postcodes example; run in release"]
fn reads_a_full_size_nhspd_file_fast_with_flat_memory() {
    let file = File::open(PATH).unwrap_or_else(|err| panic!("{PATH}: {err}; see the module docs"));
    let bytes = file.metadata().expect("metadata").len();
    let hwm_before = vm_hwm_kib();
    let start = Instant::now();
    let (mut rows, mut terminated, mut batches) = (0u64, 0u64, 0u64);
    let report = read_postcodes(file, DEFAULT_BATCH_SIZE, |batch| {
        batches += 1;
        rows += batch.len() as u64;
        terminated += batch.iter().filter(|r| r.terminated).count() as u64;
        Ok::<_, Infallible>(())
    })
    .expect("read");
    let secs = start.elapsed().as_secs_f64();
    let hwm_after = vm_hwm_kib();
    println!(
        "{rows} rows ({terminated} terminated) in {batches} batches, {:.0} MB, in {secs:.2} s: \
         {:.0} rows/s, {:.0} MB/s; VmHWM {} MiB before, {} MiB after",
        bytes as f64 / 1e6,
        rows as f64 / secs,
        bytes as f64 / 1e6 / secs,
        hwm_before / 1024,
        hwm_after / 1024,
    );
    assert_eq!(report.kind, FileKind::Nhspd);
    assert_eq!((report.accepted, report.bad), (rows, 0));
    assert!(
        hwm_after < hwm_before + 64 * 1024,
        "memory grew with the file"
    );
}

/// Returns the process's peak resident set size in KiB (`VmHWM` in `/proc/self/status`).
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}
