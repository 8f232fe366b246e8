//! Times the publish extractor on Bundles whose start tag carries many junk attributes (the
//! quadratic case of issue 10 §3): 10,000, 40,000, and as many as fit in 3 MB.
//!
//! ```text
//! cargo run --release -p nems-edge --example bench_start_tag
//! ```
#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

use std::time::Instant;

use nems_edge::translate::bundle;

fn main() {
    let three_mb = 3 * 1024 * 1024;
    for count in [10_000usize, 40_000, usize::MAX] {
        let mut attrs = String::new();
        let mut n = 0;
        while n < count {
            let next = format!(" a{n}=\"x\"");
            if attrs.len() + next.len() + 100 > three_mb {
                break;
            }
            attrs.push_str(&next);
            n += 1;
        }
        let body = format!(
            r#"<Bundle xmlns="http://hl7.org/fhir"{attrs}><type value="message"/></Bundle>"#
        );
        let started = Instant::now();
        let outcome = bundle::extract(body.as_bytes());
        let took = started.elapsed();
        let answer = match outcome {
            Ok(_) => "accepted".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        println!(
            "start tag with {n} attributes ({:.2} MB): {:.3} ms, {answer}",
            body.len() as f64 / 1e6,
            took.as_secs_f64() * 1e3
        );
    }
}
