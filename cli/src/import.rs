//! `nems import FILE`: detects the file's official shape, reads it as a stream and sends
//! its rows to core's operator API in batches. Core replaces the previous data set in one
//! commit at the end (demographics are upserted); the request stream ends cleanly only
//! after the whole file was read, so a file that fails part-way leaves the previous set in
//! force. A progress bar with rate and ETA shows on a terminal; otherwise a plain line
//! every few seconds.

use std::io::{IsTerminal, Read};
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
    for bad in report.bad_rows.iter().take(20) {
        tracing::warn!(file = name, "bad row {bad}");
    }
    if report.bad > 0 {
        tracing::warn!(file = name, bad = report.bad, "rows refused as malformed");
    }
    Ok(Summary {
        rows,
        bad: report.bad,
        bad_rows: report.bad_rows,
        kind: kind.format_name().to_string(),
    })
}

use tokio_stream::StreamExt;

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
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    let rate = done as f64 / secs;
                    let line = match size {
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
                    };
                    tracing::info!("{line}");
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
