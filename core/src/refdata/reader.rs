//! The shared streaming loop: detect the shape from the first line, then read records one at
//! a time into a reused buffer, hand full batches to the caller and count what was refused.
//!
//! Memory stays flat: one record buffer, the CSV reader's buffer and one batch.

use std::io::{self, Chain, Cursor, Read};

use csv::ByteRecord;

use super::detect::{DETECT_LINES, Detected, HEAD_LIMIT, UTF8_BOM, detect_layout};
use super::{BadRow, FileKind, MAX_BAD_ROW_EXAMPLES, ReadError, ReadReport, Refusal};

/// Bytes the CSV reader buffers at a time.
const CSV_BUFFER: usize = 256 * 1024;

/// Largest batch allocated up front, so a huge batch size does not reserve memory for rows a
/// small file never has.
const MAX_PREALLOCATED_ROWS: usize = 16 * 1024;

/// An opened file: its detected shape and a CSV reader positioned at its first byte.
pub(crate) struct Source<R> {
    pub(crate) detected: Detected,
    records: csv::Reader<StrictLines<Chain<Cursor<Vec<u8>>, R>>>,
}

/// What [`StrictLines`] puts before the end of a line that ends inside a quoted field: a
/// quote that closes the field, so the CSV reader starts the next line afresh, and a NUL
/// byte (never in a text file: detection refuses binary data) that marks the record bad.
const UNCLOSED: &[u8; 2] = b"\"\0";

/// Strict CSV framing: a record never spans lines. The official files have no line breaks
/// inside fields, so a line with an odd number of quotes ends inside a quoted field (an
/// unclosed quote); a lenient reader would swallow the next line into that field. This
/// reader closes the field at the line's end and marks it (see [`UNCLOSED`]), so the row is
/// refused as bad and the next line is read as its own row.
pub(crate) struct StrictLines<R> {
    inner: io::BufReader<R>,
    /// Quote parity of the current line so far.
    odd: bool,
    /// Bytes of [`UNCLOSED`] still to hand out.
    pending: &'static [u8],
}

impl<R: Read> StrictLines<R> {
    fn new(inner: R) -> Self {
        Self {
            inner: io::BufReader::with_capacity(CSV_BUFFER, inner),
            odd: false,
            pending: &[],
        }
    }
}

/// Tells whether `bytes` hold an odd number of quotes (a loop the compiler vectorises).
fn odd_quotes(bytes: &[u8]) -> bool {
    bytes.iter().filter(|&&b| b == b'"').count() % 2 == 1
}

impl<R: Read> Read for StrictLines<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use io::BufRead;
        if out.is_empty() {
            return Ok(0);
        }
        if !self.pending.is_empty() {
            let n = self.pending.len().min(out.len());
            out[..n].copy_from_slice(&self.pending[..n]);
            self.pending = &self.pending[n..];
            return Ok(n);
        }
        let available = self.inner.fill_buf()?;
        if available.is_empty() {
            // The last line, without a line end, ended inside a quoted field.
            if std::mem::take(&mut self.odd) {
                self.pending = UNCLOSED;
                return self.read(out);
            }
            return Ok(0);
        }
        let chunk = &available[..available.len().min(out.len())];
        let mut odd = self.odd;
        let mut line_start = 0;
        let mut unclosed_at = None;
        for newline in memchr::memchr_iter(b'\n', chunk) {
            if odd != odd_quotes(&chunk[line_start..newline]) {
                unclosed_at = Some(newline);
                break;
            }
            odd = false;
            line_start = newline + 1;
        }
        let copied = match unclosed_at {
            Some(newline) => {
                // The line end stays in the buffer, after the marker.
                self.odd = false;
                self.pending = UNCLOSED;
                newline
            }
            None => {
                self.odd = odd != odd_quotes(&chunk[line_start..]);
                chunk.len()
            }
        };
        out[..copied].copy_from_slice(&chunk[..copied]);
        self.inner.consume(copied);
        if copied == 0 {
            return self.read(out);
        }
        Ok(copied)
    }
}

/// Reads the first line of `input`, detects its shape and checks that it is one of `allowed`.
///
/// `expected` names the accepted formats in the refusal.
pub(crate) fn open<R: Read, E>(
    mut input: R,
    expected: &'static str,
    allowed: &[FileKind],
) -> Result<Source<R>, ReadError<E>> {
    let mut head = read_head(&mut input).map_err(ReadError::Io)?;
    let detected =
        detect_layout(&head).map_err(|found| ReadError::Refused(Refusal::new(expected, found)))?;
    if !allowed.contains(&detected.kind) {
        let found = detected.kind.to_string();
        return Err(ReadError::Refused(Refusal::new(expected, found)));
    }
    if head.starts_with(UTF8_BOM) {
        head.drain(..UTF8_BOM.len());
    }
    let records = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(CSV_BUFFER)
        // Records end at `\n` only: with the default CRLF terminator the reader counts the
        // `\n` of a CRLF into the next record and reports line numbers one short. A `\r`
        // left at the end of the last field is trimmed with the other whitespace.
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(StrictLines::new(Cursor::new(head).chain(input)));
    Ok(Source { detected, records })
}

/// Reads from `input` what detection looks at: the first lines, up to the limit or the end.
fn read_head(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let read = match input.read(&mut chunk) {
            Ok(0) => return Ok(head),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        head.extend_from_slice(&chunk[..read]);
        let lines = head.iter().filter(|&&b| b == b'\n').count();
        if lines > DETECT_LINES || head.len() >= HEAD_LIMIT {
            return Ok(head);
        }
    }
}

/// One record with the detected shape, for the row parsers.
pub(crate) struct Fields<'a> {
    record: &'a ByteRecord,
    detected: &'a Detected,
}

impl<'a> Fields<'a> {
    /// Returns column `index` (0-based) trimmed, or a reason naming the column when it is
    /// not UTF-8.
    pub(crate) fn text(&self, index: usize) -> Result<&'a str, String> {
        let bytes = self.record.get(index).unwrap_or_default();
        std::str::from_utf8(bytes)
            .map(str::trim)
            .map_err(|_| format!("{}: not UTF-8 text", self.name(index)))
    }

    /// Names column `index` for a reason: `column pcds`, or `column 18` in headerless files.
    pub(crate) fn name(&self, index: usize) -> String {
        self.detected.column_name(index)
    }
}

impl<R: Read> Source<R> {
    /// Reads every row, turning records into `T` with `parse` and handing batches of
    /// `batch_size` to `on_batch`.
    ///
    /// `parse` returns `Ok(Some(row))` to keep a row, `Ok(None)` to skip it by design, or
    /// `Err(reason)` for a bad row (the reason names columns, never values). Blank records are
    /// ignored; a repeat of the header line (as when per-area files are concatenated) is
    /// skipped; a record with the wrong number of columns is bad.
    pub(crate) fn run<T, E>(
        mut self,
        batch_size: usize,
        mut parse: impl FnMut(&Fields<'_>) -> Result<Option<T>, String>,
        mut on_batch: impl FnMut(Vec<T>) -> Result<(), E>,
    ) -> Result<ReadReport, ReadError<E>> {
        let batch_size = batch_size.max(1);
        let capacity = batch_size.min(MAX_PREALLOCATED_ROWS);
        let mut report = ReadReport::new(self.detected.kind);
        let mut batch = Vec::with_capacity(capacity);
        let mut record = ByteRecord::new();
        let mut header_pending = !self.detected.header.is_empty();
        while self
            .records
            .read_byte_record(&mut record)
            .map_err(csv_error)?
        {
            if is_blank(&record) {
                continue;
            }
            if header_pending {
                header_pending = false;
                continue;
            }
            let line = record.position().map_or(0, csv::Position::line);
            if self.is_repeated_header(&record) {
                report.skipped += 1;
                continue;
            }
            if record.as_slice().last() == Some(&0) {
                report.add_bad(line, "unclosed quote at the end of the line".to_owned());
                continue;
            }
            // Left open by a quote that starts a field after a literal one (so the line's
            // quotes balance): the record ran on over the next lines. Each line it took is
            // counted bad, so the totals never hide them.
            let spanned = memchr::memchr_iter(b'\n', record.as_slice()).count() as u64;
            if spanned > 0 {
                for extra in 0..=spanned {
                    let reason = if extra == 0 {
                        "a quoted field runs past the end of its line"
                    } else {
                        "taken into the quoted field of an earlier line"
                    };
                    report.add_bad(line + extra, reason.to_owned());
                }
                continue;
            }
            if record.len() != self.detected.columns {
                let reason = format!(
                    "expected {} columns, found {}",
                    self.detected.columns,
                    record.len()
                );
                report.add_bad(line, reason);
                continue;
            }
            let fields = Fields {
                record: &record,
                detected: &self.detected,
            };
            match parse(&fields) {
                Ok(Some(row)) => {
                    report.accepted += 1;
                    batch.push(row);
                    if batch.len() >= batch_size {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(capacity));
                        on_batch(full).map_err(ReadError::Sink)?;
                    }
                }
                Ok(None) => report.skipped += 1,
                Err(reason) => report.add_bad(line, reason),
            }
        }
        if !batch.is_empty() {
            on_batch(batch).map_err(ReadError::Sink)?;
        }
        Ok(report)
    }

    /// Tells whether `record` repeats the header line.
    fn is_repeated_header(&self, record: &ByteRecord) -> bool {
        match (self.detected.header.first(), record.get(0)) {
            (Some(name), Some(first)) => first.trim_ascii().eq_ignore_ascii_case(name.as_bytes()),
            _ => false,
        }
    }
}

/// Tells whether every field of `record` is empty or whitespace.
fn is_blank(record: &ByteRecord) -> bool {
    // The fields' bytes back to back: stops at the first non-blank byte of a normal row.
    record.as_slice().iter().all(u8::is_ascii_whitespace)
}

/// Turns a CSV reader error into an I/O error (with byte records and flexible lengths, the
/// reader only fails on I/O).
fn csv_error<E>(err: csv::Error) -> ReadError<E> {
    match err.into_kind() {
        csv::ErrorKind::Io(io) => ReadError::Io(io),
        // Not reachable with byte records and flexible lengths; the error's text is not
        // passed on because some kinds quote field values.
        _ => ReadError::Io(io::Error::other("csv reader failed")),
    }
}

// === ReadReport ===

impl ReadReport {
    /// Starts an empty report for a file of `kind`.
    fn new(kind: FileKind) -> Self {
        Self {
            kind,
            accepted: 0,
            skipped: 0,
            bad: 0,
            bad_rows: Vec::new(),
        }
    }

    /// Counts a bad row and keeps it as an example while there are fewer than the maximum.
    fn add_bad(&mut self, line: u64, reason: String) {
        self.bad += 1;
        if self.bad_rows.len() < MAX_BAD_ROW_EXAMPLES {
            self.bad_rows.push(BadRow { line, reason });
        }
    }
}
