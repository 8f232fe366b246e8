//! `nems import PATH...`: detects each file's official shape, reads the files as one stream
//! per data set and sends their rows to core's operator API in batches. Each reference data
//! set (postcodes, practices, code map) is **replaced** by the rows of all its files in one
//! commit at the end, in one generation (demographics are upserted). Several files of one
//! set (ONS per-area files, a folder, a zip as published) make one set.
//!
//! Core refuses, and keeps the set in force, an import that would leave the set empty,
//! shrink it by more than `core.import.max_shrink_percent` or whose rows were malformed
//! beyond `core.import.max_bad_row_percent` (limits a caller may change per import), unless
//! forced; a check (`--check`) reports what would change and keeps the set. The request
//! stream ends cleanly only after every file was read, so a file that fails part-way
//! leaves the previous set in force. A progress bar with rate and ETA shows on a terminal;
//! otherwise a plain line on stderr every few seconds. [`write_report`] prints the
//! malformed rows and the totals; both go to stderr directly, not through tracing, so they
//! show whatever the log level.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Rows stored by core (for a check: rows the new set would have).
    pub rows: u64,
    /// Rows refused as malformed.
    pub bad: u64,
    /// The first malformed rows (file, line number and reason, never the values), in
    /// file order; at most [`refdata::MAX_BAD_ROW_EXAMPLES`] per file.
    pub bad_rows: Vec<BadRow>,
    /// The detected kind (kinds joined by `+` when the files differ).
    pub kind: String,
    /// Whether the new set is in force (false for a check; demographics: always true).
    pub applied: bool,
    /// Rows of the set in force before.
    pub previous_rows: u64,
    /// The set's generation in force after the import.
    pub generation: u64,
    /// The limits the import broke: let through with `--force`, or (for a check) the
    /// reasons it would be refused.
    pub refusals: Vec<String>,
    /// For a check: keys added, removed and changed against the set in force.
    pub changes: Option<(u64, u64, u64)>,
    /// Files read.
    pub files: usize,
}

/// One malformed row: where it is and why it was refused (never its values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// The file (its name, or its path inside a folder or zip).
    pub file: String,
    /// Line number in the file (1-based).
    pub line: u64,
    /// Short reason naming the column.
    pub reason: String,
}

/// How an import is judged by core (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Options {
    /// Report what would change and keep the set in force.
    pub check: bool,
    /// Replace the set even when a limit refuses the import.
    pub force: bool,
    /// Shrink limit for this import, in percent; `None`: core's configuration.
    pub max_shrink_percent: Option<f64>,
    /// Bad-row limit for this import, in percent; `None`: core's configuration.
    pub max_bad_row_percent: Option<f64>,
}

/// A file to read: an open reader (read once), a file on disk, or an entry of a zip.
pub struct Source {
    /// Its name in reports: the file name, or the path inside a folder or zip.
    pub name: String,
    /// Its size in bytes (uncompressed), when known, for the progress display.
    pub size: Option<u64>,
    origin: Origin,
}

enum Origin {
    Reader(Mutex<Option<Box<dyn Read + Send>>>),
    File(PathBuf),
    Zip { archive: PathBuf, index: usize },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// A reader read once (detection keeps what it read in front of the rest).
    pub fn reader(name: &str, reader: impl Read + Send + 'static, size: Option<u64>) -> Self {
        Self {
            name: name.to_string(),
            size,
            origin: Origin::Reader(Mutex::new(Some(Box::new(reader)))),
        }
    }

    /// A file on disk.
    pub fn file(name: &str, path: &Path) -> Self {
        Self {
            name: name.to_string(),
            size: std::fs::metadata(path).map(|m| m.len()).ok(),
            origin: Origin::File(path.to_path_buf()),
        }
    }

    /// Runs `f` on this source's bytes from the start.
    fn with_reader<T>(&self, f: impl FnOnce(&mut dyn Read) -> T) -> anyhow::Result<T> {
        match &self.origin {
            Origin::Reader(slot) => {
                let mut reader = slot
                    .lock()
                    .map_err(|_| anyhow::anyhow!("reader poisoned"))?
                    .take()
                    .context("this reader was read already")?;
                Ok(f(&mut reader))
            }
            Origin::File(path) => {
                let mut file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Ok(f(&mut file))
            }
            Origin::Zip { archive, index } => {
                let file = std::fs::File::open(archive)
                    .with_context(|| format!("opening {}", archive.display()))?;
                let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
                    .with_context(|| format!("reading the zip {}", archive.display()))?;
                let mut entry = zip
                    .by_index(*index)
                    .with_context(|| format!("reading {} in {}", self.name, archive.display()))?;
                Ok(f(&mut entry))
            }
        }
    }

    /// Detects this source's kind from its first lines. An open reader keeps what was read
    /// in front of its remaining bytes.
    fn detect(&self) -> anyhow::Result<Result<FileKind, refdata::Refusal>> {
        let head = |r: &mut dyn Read| -> std::io::Result<Vec<u8>> {
            let mut head = Vec::new();
            r.take(64 * 1024).read_to_end(&mut head)?;
            Ok(head)
        };
        if let Origin::Reader(slot) = &self.origin {
            let mut guard = slot
                .lock()
                .map_err(|_| anyhow::anyhow!("reader poisoned"))?;
            let mut reader = guard.take().context("this reader was read already")?;
            let bytes = head(&mut reader).with_context(|| format!("{}: read failed", self.name))?;
            let kind = refdata::detect(&bytes);
            *guard = Some(Box::new(std::io::Cursor::new(bytes).chain(reader)));
            return Ok(kind);
        }
        let bytes = self
            .with_reader(head)?
            .with_context(|| format!("{}: read failed", self.name))?;
        Ok(refdata::detect(&bytes))
    }
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
    crate::remote::check_url(url)?;
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

/// Imports `source` (a whole file's reader) named `name` into core at `operator_url`.
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
    let source = Source::reader(name, source, size);
    import_one(
        source,
        operator_url,
        tls,
        &Options::default(),
        show_progress,
    )
    .await
}

/// Imports one source with `options`.
pub async fn import_one(
    source: Source,
    operator_url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    options: &Options,
    show_progress: bool,
) -> anyhow::Result<Summary> {
    let name = source.name.clone();
    let kind = source
        .detect()?
        .map_err(|r| anyhow::anyhow!("{name}: {r}"))?;
    let files = vec![(source, kind)];
    import_sources(files, &name, operator_url, tls, options, show_progress).await
}

/// What [`plan`] found: the files of each data set, and the files it leaves out.
#[derive(Debug, Default)]
pub struct Plan {
    /// One group per data set (postcodes, practices, code map, demographics), in that
    /// order, each with its files.
    pub groups: Vec<Vec<(Source, FileKind)>>,
    /// Files found in folders or zips and left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// A file found in a folder or zip.
struct Found {
    source: Source,
    /// Whether it sits in a `multi_csv` folder (ONS per-area files).
    per_area: bool,
}

/// Finds the files to import in `paths` (files, folders searched for `.csv` files, `.zip`
/// archives searched for `.csv` entries) and groups them by data set.
///
/// A file named on its own must be of a known shape. Files found in folders and zips that
/// are of no known shape (the ONS `Documents/` names-and-codes files other than the sub-ICB
/// lookup, for example) are left out and listed. When a folder or zip holds both a whole
/// postcode file and per-area files (`multi_csv/`, the same rows split by area), the
/// per-area files are left out.
///
/// # Errors
/// A path that cannot be read, a file named on its own of no known shape, or no file to
/// import at all.
pub fn plan(paths: &[PathBuf]) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let mut groups: [Vec<(Source, FileKind)>; 4] = Default::default();
    let group_of = |kind: FileKind| match kind.data_set() {
        Some(pb::ReferenceDataSet::Postcodes) => 0,
        Some(pb::ReferenceDataSet::Practices) => 1,
        Some(_) => 2,
        None => 3,
    };
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let is_zip = !meta.is_dir()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
        if !meta.is_dir() && !is_zip {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            let source = Source::file(&name, path);
            let kind = source
                .detect()?
                .map_err(|r| anyhow::anyhow!("{name}: {r}"))?;
            groups[group_of(kind)].push((source, kind));
            continue;
        }
        let found = if is_zip {
            zip_entries(path)?
        } else {
            let mut found = Vec::new();
            folder_files(path, path, &mut found)?;
            found
        };
        let mut detected = Vec::new();
        for f in found {
            match f.source.detect()? {
                Ok(kind) => detected.push((f, kind)),
                Err(_) => plan
                    .skipped
                    .push((f.source.name, "not a reference data file".into())),
            }
        }
        let is_postcodes = |k: &FileKind| group_of(*k) == 0;
        let whole = detected.iter().any(|(f, k)| !f.per_area && is_postcodes(k));
        for (f, kind) in detected {
            if whole && f.per_area && is_postcodes(&kind) {
                plan.skipped.push((
                    f.source.name,
                    "a per-area file; the whole file beside it has the same rows".into(),
                ));
                continue;
            }
            groups[group_of(kind)].push((f.source, kind));
        }
    }
    plan.groups = groups.into_iter().filter(|g| !g.is_empty()).collect();
    if plan.groups.is_empty() {
        bail!("no reference data or demographics file found");
    }
    Ok(plan)
}

/// Tells whether `name` ends with `.csv` (any case).
fn is_csv(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > 4 && bytes[bytes.len() - 4..].eq_ignore_ascii_case(b".csv")
}

/// Tells whether a path inside a folder or zip lies in a `multi_csv` folder.
fn in_per_area_folder(relative: &str) -> bool {
    relative
        .split(['/', '\\'])
        .rev()
        .skip(1)
        .any(|part| part.eq_ignore_ascii_case("multi_csv"))
}

/// The `.csv` files under `dir` (sub-folders included), in name order.
fn folder_files(root: &Path, dir: &Path, out: &mut Vec<Found>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading the folder {}", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            folder_files(root, &path, out)?;
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if is_csv(&relative) {
            out.push(Found {
                per_area: in_per_area_folder(&relative),
                source: Source::file(&relative, &path),
            });
        }
    }
    Ok(())
}

/// The `.csv` entries of the zip at `path`, in name order.
fn zip_entries(path: &Path) -> anyhow::Result<Vec<Found>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("reading the zip {}", path.display()))?;
    let mut out = Vec::new();
    for index in 0..zip.len() {
        let entry = zip
            .by_index(index)
            .with_context(|| format!("reading the zip {}", path.display()))?;
        let name = entry
            .name()
            .with_context(|| format!("reading the zip {}", path.display()))?
            .into_owned();
        if !entry.is_file() || !is_csv(&name) {
            continue;
        }
        out.push(Found {
            per_area: in_per_area_folder(&name),
            source: Source {
                name,
                size: Some(entry.size()),
                origin: Origin::Zip {
                    archive: path.to_path_buf(),
                    index,
                },
            },
        });
    }
    out.sort_by(|a, b| a.source.name.cmp(&b.source.name));
    Ok(out)
}

/// Imports what `paths` hold (see [`plan`]), one data set at a time, writing each set's
/// report to `out`. Every set is tried; the error lists the sets refused or failed.
pub async fn import_paths(
    paths: &[PathBuf],
    operator_url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    options: &Options,
    show_progress: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Vec<Summary>> {
    let plan = plan(paths)?;
    let label_of = |files: &[(Source, FileKind)]| match files {
        [(one, _)] => one.name.clone(),
        [(first, _), rest @ ..] => format!("{} and {} more files", first.name, rest.len()),
        [] => String::new(),
    };
    const LISTED: usize = 10;
    for (name, why) in plan.skipped.iter().take(LISTED) {
        writeln!(out, "import: left out {name}: {why}")?;
    }
    if plan.skipped.len() > LISTED {
        writeln!(
            out,
            "import: {} more files left out",
            plan.skipped.len() - LISTED
        )?;
    }
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    let sets = plan.groups.len();
    for files in plan.groups {
        let label = label_of(&files);
        let started = Instant::now();
        match import_sources(
            files,
            &label,
            operator_url,
            tls.clone(),
            options,
            show_progress,
        )
        .await
        {
            Ok(summary) => {
                write_report(out, &label, &summary, started.elapsed())?;
                summaries.push(summary);
            }
            // One set: its error is the command's (one line); several: each is reported and
            // the others still tried.
            Err(e) if sets == 1 => bail!("import {label}: {e:#}"),
            Err(e) => {
                writeln!(out, "import {label}: {e:#}")?;
                failures.push(label);
            }
        }
    }
    if !failures.is_empty() {
        bail!("import of {} failed (see above)", failures.join(", "));
    }
    Ok(summaries)
}

/// What the reader task sends: a batch, or the end of every file.
enum Message {
    Batch(Batch),
    End { bad: u64 },
}

/// Imports `files`, all of one data set (or all demographics), as one import named
/// `label`.
///
/// # Errors
/// A file that cannot be read or is of no known shape, a refusal by core (the set in
/// force is kept), or core unreachable.
pub async fn import_sources(
    files: Vec<(Source, FileKind)>,
    label: &str,
    operator_url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    options: &Options,
    show_progress: bool,
) -> anyhow::Result<Summary> {
    let Some(&(_, kind)) = files.first() else {
        bail!("{label}: no file to import");
    };
    if files.iter().any(|(_, k)| k.data_set() != kind.data_set()) {
        bail!("{label}: the files are of different data sets");
    }
    let mut formats: Vec<&str> = Vec::new();
    for (_, k) in &files {
        if !formats.contains(&k.format_name()) {
            formats.push(k.format_name());
        }
    }
    let format = formats.join("+");
    let file_count = files.len();
    let size = files.iter().map(|(s, _)| s.size).sum::<Option<u64>>();
    let read = Arc::new(AtomicU64::new(0));
    let progress = show_progress.then(|| Progress::start(label, size, read.clone()));
    let mut client = operator_client_with(operator_url, tls)?;
    // `None` marks the end of every file. Core commits a reference data set when the
    // request stream ends cleanly, so only files read to their end may end it: after a
    // failed read the stream stays open and the call is dropped, which resets it, and core
    // abandons the import with the previous set still in force.
    let (tx, rx) = mpsc::channel::<Option<Message>>(4);
    let label_owned = label.to_string();
    let parse = tokio::task::spawn_blocking(move || -> ReadOutcome {
        let mut total = Totals::default();
        for (source, _) in &files {
            let read = read.clone();
            let report = source
                .with_reader(|r| {
                    let counting = Counting { inner: r, read };
                    refdata::read_any(counting, DEFAULT_BATCH_SIZE, |batch| {
                        tx.blocking_send(Some(Message::Batch(batch)))
                            .map_err(|_| "core stopped the import")
                    })
                })
                .map_err(|e| (source.name.clone(), FileError::Open(format!("{e:#}"))))?
                .map_err(|e| (source.name.clone(), FileError::Read(e)))?;
            total.add(&source.name, report);
        }
        tx.blocking_send(Some(Message::End { bad: total.bad }))
            .and_then(|()| tx.blocking_send(None))
            .map_err(|_| {
                (
                    label_owned,
                    FileError::Read(ReadError::Sink("core stopped the import")),
                )
            })?;
        Ok(total)
    });
    let batches = ReceiverStream::new(rx)
        .chain(tokio_stream::pending())
        .map_while(|message| message);
    let mut summary = Summary {
        kind: format.clone(),
        files: file_count,
        ..Default::default()
    };
    let report = match kind {
        FileKind::Demographics => {
            let stream = batches.filter_map(|m| match m {
                Message::Batch(Batch::Patients(patients)) => {
                    Some(pb::ImportDemographicsRequest { patients })
                }
                _ => None,
            });
            let (sent, report) = while_reading(client.import_demographics(stream), parse).await?;
            if let Some(sent) = sent {
                let response = sent
                    .map_err(|s| refused(operator_url, label, &s))?
                    .into_inner();
                summary.rows = response.written + response.skipped_older;
                summary.applied = true;
            }
            report
        }
        other => {
            let data_set = other.data_set().context("not a reference data set")?;
            let header = pb::ImportReferenceDataRequest {
                item: Some(pb::import_reference_data_request::Item::Header(
                    pb::ImportHeader {
                        data_set: data_set.into(),
                        format,
                        source: label.to_string(),
                        check: options.check,
                        force: options.force,
                        max_shrink_percent: options.max_shrink_percent,
                        max_bad_row_percent: options.max_bad_row_percent,
                    },
                )),
            };
            let batches = batches.map(|m| {
                use pb::import_reference_data_request::Item;
                let item = match m {
                    Message::Batch(Batch::Postcodes(rows)) => {
                        Item::Postcodes(pb::PostcodeBatch { rows })
                    }
                    Message::Batch(Batch::Practices(rows)) => {
                        Item::Practices(pb::PracticeBatch { rows })
                    }
                    Message::Batch(Batch::CodeMap(rows)) => {
                        Item::CodeMap(pb::CodeMapBatch { rows })
                    }
                    // Planning keeps demographics out of reference data imports; core
                    // refuses a batch of the wrong set.
                    Message::Batch(Batch::Patients(_)) => {
                        Item::Postcodes(pb::PostcodeBatch::default())
                    }
                    Message::End { bad } => Item::End(pb::ImportEnd { bad_rows: bad }),
                };
                pb::ImportReferenceDataRequest { item: Some(item) }
            });
            let stream = tokio_stream::once(header).chain(batches);
            let (sent, report) = while_reading(client.import_reference_data(stream), parse).await?;
            if let Some(sent) = sent {
                let r = sent
                    .map_err(|s| refused(operator_url, label, &s))?
                    .into_inner();
                summary.rows = r.rows;
                summary.applied = r.applied;
                summary.previous_rows = r.previous_rows;
                summary.generation = r.generation;
                summary.refusals = r.refusals;
                if options.check {
                    summary.changes = Some((r.added, r.removed, r.changed));
                }
            }
            report
        }
    };
    if let Some(p) = progress {
        p.finish();
    }
    let totals = match report {
        Ok(totals) => totals,
        Err((name, FileError::Read(ReadError::Refused(r)))) => bail!("{name}: {r}"),
        Err((name, FileError::Read(ReadError::Io(e)))) => bail!("{name}: read failed: {e}"),
        Err((name, FileError::Read(ReadError::Sink(e)))) => bail!("{name}: {e}"),
        Err((name, FileError::Open(e))) => bail!("{name}: {e}"),
    };
    summary.bad = totals.bad;
    summary.bad_rows = totals.bad_rows;
    Ok(summary)
}

/// One line for a call that failed: core's refusal (which keeps the set in force) in its
/// own words, or why core's operator API was not reached.
fn refused(url: &str, label: &str, status: &tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::FailedPrecondition {
        return anyhow::anyhow!("{}", status.message());
    }
    crate::remote::explain(url, &format!("the import of {label}"), status)
}

/// Why reading one of the files failed.
#[derive(Debug)]
enum FileError {
    Open(String),
    Read(ReadError<&'static str>),
}

/// The reports of every file read, added up.
#[derive(Debug, Default)]
struct Totals {
    bad: u64,
    bad_rows: Vec<BadRow>,
}

impl Totals {
    fn add(&mut self, file: &str, report: refdata::ReadReport) {
        self.bad += report.bad;
        self.bad_rows
            .extend(report.bad_rows.into_iter().map(|b| BadRow {
                file: file.to_string(),
                line: b.line,
                reason: b.reason,
            }));
    }
}

use tokio_stream::StreamExt;

/// Most malformed rows [`write_report`] lists.
pub const REPORTED_BAD_ROWS: usize = 20;

/// Writes what an import of `name` did for the person who ran it: the first
/// [`REPORTED_BAD_ROWS`] malformed rows (file when there are several, line number and
/// reason; reasons never quote values), how many more there were, and a totals line; for a
/// check, what would change and whether core would refuse it; for a forced import, the
/// limits it broke.
pub fn write_report(
    out: &mut dyn Write,
    name: &str,
    summary: &Summary,
    elapsed: Duration,
) -> std::io::Result<()> {
    let listed = summary.bad_rows.len().min(REPORTED_BAD_ROWS);
    for bad in &summary.bad_rows[..listed] {
        if summary.files > 1 {
            writeln!(
                out,
                "import {name}: bad {} line {}: {}",
                bad.file, bad.line, bad.reason
            )?;
        } else {
            writeln!(out, "import {name}: bad line {}: {}", bad.line, bad.reason)?;
        }
    }
    let unlisted = summary.bad.saturating_sub(listed as u64);
    if unlisted > 0 {
        writeln!(out, "import {name}: {unlisted} more bad rows not listed")?;
    }
    if let Some((added, removed, changed)) = summary.changes {
        writeln!(
            out,
            "import {name}: check only, nothing changed: {} rows would replace {} ({added} added, {removed} removed, {changed} changed), {} refused as malformed ({}, {:.1}s)",
            summary.rows,
            summary.previous_rows,
            summary.bad,
            summary.kind,
            elapsed.as_secs_f64()
        )?;
        if summary.refusals.is_empty() {
            return writeln!(out, "import {name}: the import would be accepted");
        }
        return writeln!(
            out,
            "import {name}: the import would be refused: {}",
            summary.refusals.join("; ")
        );
    }
    writeln!(
        out,
        "import {name}: {} rows stored, {} refused as malformed ({}, {:.1}s)",
        summary.rows,
        summary.bad,
        summary.kind,
        elapsed.as_secs_f64()
    )?;
    if !summary.refusals.is_empty() {
        writeln!(
            out,
            "import {name}: forced despite: {}",
            summary.refusals.join("; ")
        )?;
    }
    Ok(())
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

/// What the reader task gives back: the totals, or the file that failed and why.
type ReadOutcome = Result<Totals, (String, FileError)>;

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
                BadRow {
                    file: "nhg.csv".into(),
                    line: 2,
                    reason: "column pcds: not a valid postcode".into(),
                },
                BadRow {
                    file: "nhg.csv".into(),
                    line: 4,
                    reason: "row has 3 columns, the header 5".into(),
                },
            ],
            kind: "NHSPD".into(),
            files: 1,
            ..Default::default()
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
                .map(|line| BadRow {
                    file: "big.csv".into(),
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
        // Several files: each bad row names its file.
        let several = Summary {
            rows: 4,
            bad: 1,
            bad_rows: vec![BadRow {
                file: "multi_csv/NSPL_AUG_2025_UK_AB.csv".into(),
                line: 7,
                reason: "unclosed quote at the end of the line".into(),
            }],
            kind: "NSPL".into(),
            files: 2,
            ..Default::default()
        };
        let mut out = Vec::new();
        write_report(&mut out, "nspl", &several, Duration::ZERO).unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with(
            "import nspl: bad multi_csv/NSPL_AUG_2025_UK_AB.csv line 7: unclosed quote"
        ));
    }

    #[test]
    fn a_check_reports_the_changes_and_the_verdict_and_a_forced_import_its_reasons() {
        let check = Summary {
            rows: 90,
            previous_rows: 100,
            bad: 0,
            kind: "NHSPD".into(),
            files: 1,
            changes: Some((2, 12, 3)),
            refusals: vec!["the postcodes set would shrink from 100 to 90 rows".into()],
            ..Default::default()
        };
        let mut out = Vec::new();
        write_report(&mut out, "nhg.csv", &check, Duration::ZERO).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "import nhg.csv: check only, nothing changed: 90 rows would replace 100 (2 added, 12 removed, 3 changed), 0 refused as malformed (NHSPD, 0.0s)\n\
             import nhg.csv: the import would be refused: the postcodes set would shrink from 100 to 90 rows\n"
        );
        let forced = Summary {
            changes: None,
            applied: true,
            ..check
        };
        let mut out = Vec::new();
        write_report(&mut out, "nhg.csv", &forced, Duration::ZERO).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("forced despite: the postcodes set would shrink from 100 to 90 rows\n")
        );
    }

    #[test]
    fn per_area_folders_and_csv_names_are_recognised() {
        assert!(in_per_area_folder("Data/multi_csv/NSPL_AUG_2025_UK_AB.csv"));
        assert!(in_per_area_folder("multi_csv\\NSPL_AUG_2025_UK_AB.csv"));
        assert!(!in_per_area_folder("Data/NSPL_AUG_2025_UK.csv"));
        assert!(!in_per_area_folder("multi_csv"));
        assert!(is_csv("Data/nhg25feb.CSV") && !is_csv("User Guide/guide.pdf") && !is_csv(".csv"));
        assert!(
            !is_csv("€€") && is_csv("Données/€.csv"),
            "no panic on multi-byte names"
        );
    }
}
