//! Writes a synthetic NHSPD-shaped file (headerless, 49 quoted columns, as `Data/nhg*.csv`)
//! of N rows with distinct valid postcodes, for measuring the reader on a full-size file.
//!
//! ```text
//! cargo run --release -p nems-core --example gen_postcodes -- /tmp/nhg-2.7m.csv 2700000
//! cargo test --release -p nems-core --test refdata_perf -- --ignored --nocapture
//! ```
//!
//! Row `i` gets a postcode built from `i` (20 postcode areas × districts 1–99 × sectors 0–9
//! × 400 units, so up to 7,920,000 distinct postcodes), one of five sub-ICB locations and
//! five local authorities in turn, and every 20th row is terminated.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line example"
)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

/// Postcode areas (two letters, so outward codes are `AA9` or `AA99`).
const AREAS: [&str; 20] = [
    "AB", "AL", "BA", "BB", "BD", "BH", "BL", "BN", "BR", "BS", "CA", "CB", "CF", "CH", "CM", "CO",
    "CR", "CT", "CV", "CW",
];
/// Letters used in inward codes.
const UNIT_LETTERS: &[u8; 20] = b"ABDEFGHJLNPQRSTUWXYZ";
/// Sub-ICB location (column 18) and ICB (column 43) pairs.
const SUB_ICBS: [(&str, &str); 5] = [
    ("15F", "QWO"),
    ("00L", "QHM"),
    ("W2U3Z", "QRV"),
    ("72Q", "QKK"),
    ("14L", "QOP"),
];
/// ODS (column 8) and GSS (column 9) local authority pairs.
const LOCAL_AUTHORITIES: [(&str, &str); 5] = [
    ("713", "E09000033"),
    ("306", "E08000003"),
    ("409", "E08000035"),
    ("929", "E06000057"),
    ("720", "E09000006"),
];
/// Columns 19–42 of the `reference-data.md` §5.4 sample row.
const MIDDLE: &str = r#""","","","","E00023938","Q71","Y53","E01004736","","","N21","N44","Q04","5LC","Y45","E14001172","Y0801","5LC","529090","0179645","E00023938","E01004736","E02000977","E56000021""#;
/// Columns 44–49 of the sample row.
const TAIL: &str = r#""Z4P6N","P9W2J","G1U9X","E00023938","E01004736","E02000977""#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(rows)) = (args.next(), args.next()) else {
        eprintln!("usage: gen_postcodes PATH ROWS");
        std::process::exit(2);
    };
    let rows: usize = rows.parse()?;
    let capacity = AREAS.len() * 99 * 10 * 400;
    if rows > capacity {
        return Err(format!("at most {capacity} distinct postcodes").into());
    }
    let start = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    for i in 0..rows {
        let unit = i % 400;
        let sector = (i / 400) % 10;
        let district = (i / 4_000) % 99 + 1;
        let area = AREAS[i / 396_000];
        let outward = format!("{area}{district}");
        let inward = format!(
            "{sector}{}{}",
            char::from(UNIT_LETTERS[unit / 20]),
            char::from(UNIT_LETTERS[unit % 20])
        );
        let (sub_icb, icb) = SUB_ICBS[i % SUB_ICBS.len()];
        let (la_ods, la_gss) = LOCAL_AUTHORITIES[(i / 7) % LOCAL_AUTHORITIES.len()];
        let doterm = if i % 20 == 0 { "201906" } else { "" };
        writeln!(
            out,
            "\"{outward:<4} {inward}\",\"{outward} {inward}\",\"199001\",\"{doterm}\",\"5290\",\
             \"01796\",\"E99999999\",\"{la_ods}\",\"{la_gss}\",\"E05013806\",\"1\",\"1\",\
             \"E92000001\",\"Q36\",\"E12000007\",\"QA3\",\"Y56\",\"{sub_icb}\",{MIDDLE},\"{icb}\",{TAIL}"
        )?;
    }
    out.flush()?;
    println!(
        "wrote {rows} rows to {path} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
