//! ODS epraccur: GP practices (and other prescribing cost centres) and their parent sub-ICB
//! location.

use std::io::Read;

use nems_proto::v1::PracticeRow;

use super::detect::{is_ods_code, is_short_ods_code};
use super::reader::{self, Fields, Source};
use super::{FileKind, ReadError, ReadReport};

/// What [`read_practices`] accepts, for refusals.
const EXPECTED: &str = "epraccur (headerless, 27 columns, practice code in column 1)";

/// Column 1: organisation code.
const CODE: usize = 0;
/// Column 12: close date (`YYYYMMDD`), empty while open.
const CLOSE_DATE: usize = 11;
/// Column 13: status code (`A`, `C`, `D`, `P`).
const STATUS: usize = 12;
/// Column 15: commissioner, the parent sub-ICB location.
const COMMISSIONER: usize = 14;

/// Reads an epraccur file, handing [`PracticeRow`] batches of at most `batch_size` rows to
/// `on_batch`.
///
/// The parent is column 15 (commissioner); a practice is closed when column 13 (status) is
/// `C` or column 12 (close date) is set. Rows of every prescribing setting are kept (see the
/// module docs).
///
/// # Errors
/// [`ReadError::Refused`] when the file is not epraccur, [`ReadError::Io`] when reading fails,
/// [`ReadError::Sink`] when `on_batch` fails.
pub fn read_practices<R: Read, E>(
    input: R,
    batch_size: usize,
    on_batch: impl FnMut(Vec<PracticeRow>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    let source = reader::open(input, EXPECTED, &[FileKind::Epraccur])?;
    read_source(source, batch_size, on_batch)
}

/// Reads an opened epraccur file.
pub(super) fn read_source<R: Read, E>(
    source: Source<R>,
    batch_size: usize,
    on_batch: impl FnMut(Vec<PracticeRow>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    source.run(batch_size, practice_row, on_batch)
}

/// Builds a row from an epraccur record.
fn practice_row(fields: &Fields<'_>) -> Result<Option<PracticeRow>, String> {
    let code = fields.text(CODE)?.to_ascii_uppercase();
    if !is_ods_code(&code) {
        return Err(format!("{}: not an ODS code", fields.name(CODE)));
    }
    let parent = fields.text(COMMISSIONER)?.to_ascii_uppercase();
    if !parent.is_empty() && !is_short_ods_code(&parent, &[3, 5]) {
        return Err(format!(
            "{}: not an ODS sub-ICB code",
            fields.name(COMMISSIONER)
        ));
    }
    let closed =
        fields.text(STATUS)?.eq_ignore_ascii_case("C") || !fields.text(CLOSE_DATE)?.is_empty();
    Ok(Some(PracticeRow {
        code,
        parent_sub_icb: parent,
        closed,
    }))
}
