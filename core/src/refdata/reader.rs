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
    records: csv::Reader<Chain<Cursor<Vec<u8>>, R>>,
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
        .from_reader(Cursor::new(head).chain(input));
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
