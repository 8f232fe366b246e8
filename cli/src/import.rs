//! `nems import FILE`: detects the file's official shape, reads it as a stream and sends
//! its rows to core's operator API in batches. Core replaces the previous data set in one
//! commit at the end (demographics are upserted); the request stream ends cleanly only
//! after the whole file was read, so a file that fails part-way leaves the previous set in
//! force. A progress bar with rate and ETA shows on a terminal; otherwise a plain line on
//! stderr every few seconds. [`write_report`] prints the malformed rows and the totals; both
//! go to stderr directly, not through tracing, so they show whatever the log level.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nems_core::refdata::{self, Batch, DEFAULT_BATCH_SIZE, FileKind, ReadError};
use nems_proto::v1 as pb;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows stored by core.
    pub rows: u64,
    /// Rows refused as malformed.
    pub bad: u64,
    /// The first malformed rows (line number and reason, never the values), in file order;
    /// at most [`refdata::MAX_BAD_ROW_EXAMPLES`].
    pub bad_rows: Vec<refdata::BadRow>,
    /// The detected kind.
    pub kind: String,
}

/// A client for core's operator API.
pub fn operator_client(url: &str) -> anyhow::Result<OperatorServiceClient<Channel>> {
    operator_client_with(url, None)
}

/// A client for core's operator API over TLS when `tls` is given (`https://` URL).
pub fn operator_client_with(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<OperatorServiceClient<Channel>> {
    let mut endpoint = Endpoint::from_shared(url.to_string()).context("operator URL")?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).context("operator TLS")?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(OperatorServiceClient::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024))
}

struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Imports `bytes_source` (a whole file's reader) named `name` into core at `operator_url`.
pub async fn import<R: Read + Send + 'static>(
    source: R,
    name: &str,
    operator_url: &str,
    show_progress: bool,
) -> anyhow::Result<Summary> {
    import_with_size(source, name, operator_url, show_progress, None).await
}

/// Like [`import`], with the file size for the progress display.
pub async fn import_with_size<R: Read + Send + 'static>(
    source: R,
    name: &str,
    operator_url: &str,
    show_progress: bool,
    size: Option<u64>,
) -> anyhow::Result<Summary> {
    import_with(source, name, operator_url, None, show_progress, size).await
}

/// Like [`import_with_size`], over TLS when `tls` is given.
pub async fn import_with<R: Read + Send + 'static>(
    source: R,
    name: &str,
    operator_url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    show_progress: bool,
    size: Option<u64>,
) -> anyhow::Result<Summary> {
    let mut reader = std::io::BufReader::with_capacity(1 << 16, source);
    let head = {
        use std::io::BufRead;
        reader.fill_buf().context("reading the file")?.to_vec()
    };
    let kind = refdata::detect(&head).map_err(|r| anyhow::anyhow!("{name}: {r}"))?;
    let read = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: reader,
        read: read.clone(),
    };
    let progress = show_progress.then(|| Progress::start(name, size, read.clone()));
    let mut client = operator_client_with(operator_url, tls)?;
    // `None` marks the end of the file. Core commits a reference data set when the request
    // stream ends cleanly, so only a file read to its end may end it: after a failed read
    // the stream stays open and the call is dropped, which resets it, and core abandons
    // the import with the previous set still in force.
    let (tx, rx) = mpsc::channel::<Option<Batch>>(4);
    let parse = tokio::task::spawn_blocking(move || {
        let report = refdata::read_any(counting, DEFAULT_BATCH_SIZE, |batch| {
            tx.blocking_send(Some(batch))
                .map_err(|_| "core stopped the import")
        })?;
        tx.blocking_send(None)
            .map_err(|_| ReadError::Sink("core stopped the import"))?;
        Ok(report)
    });
    let batches = ReceiverStream::new(rx)
        .chain(tokio_stream::pending())
        .map_while(|batch| batch);
    let (rows, report) = match kind {
        FileKind::Demographics => {
            let stream = batches.filter_map(|b| match b {
                Batch::Patients(patients) => Some(pb::ImportDemographicsRequest { patients }),
                _ => None,
            });
            let (sent, report) = while_reading(client.import_demographics(stream), parse).await?;
            let rows = match sent {
                Some(sent) => {
                    let response = sent
                        .context("core refused the demographics import")?
                        .into_inner();
                    response.written + response.skipped_older
                }
                None => 0,
            };
            (rows, report)
        }
        other => {
            let data_set = other.data_set().context("not a reference data set")?;
            let header = pb::ImportReferenceDataRequest {
                item: Some(pb::import_reference_data_request::Item::Header(
                    pb::ImportHeader {
                        data_set: data_set.into(),
                        format: other.format_name().to_string(),
                        source: name.to_string(),
                    },
                )),
            };
            let batches = batches.map(|b| {
                use pb::import_reference_data_request::Item;
                let item = match b {
                    Batch::Postcodes(rows) => Item::Postcodes(pb::PostcodeBatch { rows }),
                    Batch::Practices(rows) => Item::Practices(pb::PracticeBatch { rows }),
                    Batch::CodeMap(rows) => Item::CodeMap(pb::CodeMapBatch { rows }),
                    Batch::Patients(_) => Item::Postcodes(pb::PostcodeBatch::default()),
                };
                pb::ImportReferenceDataRequest { item: Some(item) }
            });
            let stream = tokio_stream::once(header).chain(batches);
            let (sent, report) = while_reading(client.import_reference_data(stream), parse).await?;
            let rows = match sent {
                Some(sent) => sent.context("core refused the import")?.into_inner().rows,
                None => 0,
            };
            (rows, report)
        }
    };
    if let Some(p) = progress {
        p.finish();
    }
    let report = match report {
        Ok(report) => report,
        Err(ReadError::Refused(r)) => bail!("{name}: {r}"),
        Err(ReadError::Io(e)) => bail!("{name}: read failed: {e}"),
        Err(ReadError::Sink(e)) => bail!("{name}: {e}"),
    };
    Ok(Summary {
        rows,
        bad: report.bad,
        bad_rows: report.bad_rows,
        kind: kind.format_name().to_string(),
    })
}

use tokio_stream::StreamExt;

/// Most malformed rows [`write_report`] lists.
pub const REPORTED_BAD_ROWS: usize = 20;

/// Writes what an import of `name` did for the person who ran it: the first
/// [`REPORTED_BAD_ROWS`] malformed rows (line number and reason; reasons never quote
/// values), how many more there were, and a totals line.
pub fn write_report(
    out: &mut dyn Write,
    name: &str,
    summary: &Summary,
    elapsed: Duration,
) -> std::io::Result<()> {
    let listed = summary.bad_rows.len().min(REPORTED_BAD_ROWS);
    for bad in &summary.bad_rows[..listed] {
        writeln!(out, "import {name}: bad {bad}")?;
    }
    let unlisted = summary.bad.saturating_sub(listed as u64);
    if unlisted > 0 {
        writeln!(out, "import {name}: {unlisted} more bad rows not listed")?;
    }
    writeln!(
        out,
        "import {name}: {} rows stored, {} refused as malformed ({}, {:.1}s)",
        summary.rows,
        summary.bad,
        summary.kind,
        elapsed.as_secs_f64()
    )
}

/// The progress line printed every few seconds when stderr is not a terminal.
fn progress_line(name: &str, done: u64, size: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    match size {
        Some(total) if total > 0 && rate > 0.0 => format!(
            "import {name}: {:.0} of {:.0} MB ({:.0}%), {:.1} MB/s, eta {:.0}s",
            done as f64 / 1e6,
            total as f64 / 1e6,
            100.0 * done as f64 / total as f64,
            rate / 1e6,
            (total.saturating_sub(done)) as f64 / rate
        ),
        _ => format!(
            "import {name}: {:.0} MB read, {:.1} MB/s",
            done as f64 / 1e6,
            rate / 1e6
        ),
    }
}

/// What the reader task gives back.
type ReadOutcome = Result<refdata::ReadReport, ReadError<&'static str>>;

/// Drives `call` while the reader task reads the file. Returns core's answer, or `None`
/// when the read failed first: the call is then dropped without its request stream ever
/// ending, which cancels it, so core commits nothing.
async fn while_reading<T>(
    call: impl std::future::Future<Output = T>,
    mut parse: tokio::task::JoinHandle<ReadOutcome>,
) -> anyhow::Result<(Option<T>, ReadOutcome)> {
    let mut call = std::pin::pin!(call);
    tokio::select! {
        // Core answered first: it refused the import (it cannot succeed before the end of
        // the file); the reader stops at its next send.
        answer = &mut call => {
            let report = parse.await.context("reader task")?;
            Ok((Some(answer), report))
        }
        report = &mut parse => {
            let report = report.context("reader task")?;
            if report.is_ok() {
                Ok((Some(call.await), report))
            } else {
                Ok((None, report))
            }
        }
    }
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(name: &str, size: Option<u64>, read: Arc<AtomicU64>) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(size.unwrap_or(0));
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(name.to_string());
            let b = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    b.set_position(read.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            Progress {
                bar: Some(bar),
                ticker: Some(ticker),
            }
        } else {
            let name = name.to_string();
            let started = Instant::now();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let done = read.load(Ordering::Relaxed);
                    let line = progress_line(&name, done, size, started.elapsed());
                    // Straight to stderr, not through tracing: progress is for the person
                    // running the import, whatever the log level. A failed write (stderr
                    // closed) only loses the line.
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            });
            Progress {
                bar: None,
                ticker: Some(ticker),
            }
        }
    }

    fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_give_the_share_rate_and_eta_when_the_size_is_known() {
        let line = progress_line(
            "nhg.csv",
            50_000_000,
            Some(200_000_000),
            Duration::from_secs(10),
        );
        assert_eq!(
            line,
            "import nhg.csv: 50 of 200 MB (25%), 5.0 MB/s, eta 30s"
        );
        let line = progress_line("nhg.csv", 30_000_000, None, Duration::from_secs(10));
        assert_eq!(line, "import nhg.csv: 30 MB read, 3.0 MB/s");
        // Nothing read yet: no division by zero, no ETA.
        let line = progress_line("nhg.csv", 0, Some(1_000), Duration::ZERO);
        assert_eq!(line, "import nhg.csv: 0 MB read, 0.0 MB/s");
    }

    #[test]
    fn the_report_lists_bad_rows_and_the_totals() {
        let summary = Summary {
            rows: 3,
            bad: 5,
            bad_rows: vec![
                refdata::BadRow {
                    line: 2,
                    reason: "column pcds: not a valid postcode".into(),
                },
                refdata::BadRow {
                    line: 4,
                    reason: "row has 3 columns, the header 5".into(),
                },
            ],
            kind: "NHSPD".into(),
        };
        let mut out = Vec::new();
        write_report(&mut out, "nhg.csv", &summary, Duration::from_millis(1_500)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "import nhg.csv: bad line 2: column pcds: not a valid postcode\n\
             import nhg.csv: bad line 4: row has 3 columns, the header 5\n\
             import nhg.csv: 3 more bad rows not listed\n\
             import nhg.csv: 3 rows stored, 5 refused as malformed (NHSPD, 1.5s)\n"
        );
        // At most REPORTED_BAD_ROWS are listed, whatever the summary kept.
        let many = Summary {
            bad: 30,
            bad_rows: (1..=25)
                .map(|line| refdata::BadRow {
                    line,
                    reason: "column pcds: not a valid postcode".into(),
                })
                .collect(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_report(&mut out, "big.csv", &many, Duration::ZERO).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.matches(": bad line ").count(),
            REPORTED_BAD_ROWS,
            "{text}"
        );
        assert!(
            text.contains("bad line 20:") && !text.contains("bad line 21:"),
            "{text}"
        );
        assert!(text.contains("10 more bad rows not listed"), "{text}");
        let clean = Summary {
            rows: 7,
            kind: "epraccur".into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_report(&mut out, "epraccur.csv", &clean, Duration::ZERO).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "import epraccur.csv: 7 rows stored, 0 refused as malformed (epraccur, 0.0s)\n"
        );
    }
}
