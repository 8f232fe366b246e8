//! ONS sub-ICB location lookups: GSS code (`SICBLnnCD`) ↔ ODS code (`SICBLnnCDH`).

use std::io::Read;

use nems_proto::v1::CodeMapRow;

use super::detect::{Layout, is_gss_code, is_short_ods_code};
use super::reader::{self, Fields, Source};
use super::{FileKind, ReadError, ReadReport};

/// What [`read_code_map`] accepts, for refusals.
const EXPECTED: &str = "a sub-ICB code lookup (header SICBLnnCD,SICBLnnCDH,SICBLnnNM or \
     SICBLnnCD,SICBLnnCDH,SICBLnnNM,ICBnnCD,...; LOCnnCD or CCGnnCD also accepted)";

/// Reads a sub-ICB names-and-codes file or sub-ICB → ICB → region lookup, handing
/// [`CodeMapRow`] batches of at most `batch_size` rows to `on_batch`.
///
/// Only the sub-ICB pair is read. Rows missing either code are skipped by design.
///
/// # Errors
/// [`ReadError::Refused`] when the file is not such a lookup, [`ReadError::Io`] when reading
/// fails, [`ReadError::Sink`] when `on_batch` fails.
pub fn read_code_map<R: Read, E>(
    input: R,
    batch_size: usize,
    on_batch: impl FnMut(Vec<CodeMapRow>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    let source = reader::open(input, EXPECTED, &[FileKind::SubIcbCodeMap])?;
    read_source(source, batch_size, on_batch)
}

/// Reads an opened lookup.
pub(super) fn read_source<R: Read, E>(
    source: Source<R>,
    batch_size: usize,
    on_batch: impl FnMut(Vec<CodeMapRow>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    let (gss, ods) = match source.detected.layout {
        Layout::CodeMap { gss, ods } => (gss, ods),
        // `open` only lets lookups through; an empty GSS column makes every row skipped.
        _ => (usize::MAX, usize::MAX),
    };
    source.run(batch_size, |fields| code_row(fields, gss, ods), on_batch)
}

/// Builds a row from a lookup record.
fn code_row(fields: &Fields<'_>, gss: usize, ods: usize) -> Result<Option<CodeMapRow>, String> {
    let gss_code = fields.text(gss)?.to_ascii_uppercase();
    let ods_code = fields.text(ods)?.to_ascii_uppercase();
    if gss_code.is_empty() || ods_code.is_empty() {
        return Ok(None);
    }
    if !is_gss_code(&gss_code) {
        return Err(format!("{}: not a GSS code", fields.name(gss)));
    }
    if !is_short_ods_code(&ods_code, &[3, 5]) {
        return Err(format!("{}: not an ODS sub-ICB code", fields.name(ods)));
    }
    Ok(Some(CodeMapRow {
        gss: gss_code,
        ods: ods_code,
    }))
}
