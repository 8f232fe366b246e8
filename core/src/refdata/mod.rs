//! Readers for the official reference data files and the demographics CSV.
//!
//! A pure library: no store, no network. Each reader takes any [`std::io::Read`], detects the
//! file's shape from its first line, streams the rows as protobuf messages in batches of a
//! given size to a callback, and returns a [`ReadReport`]. Memory stays flat whatever the file
//! size: one record buffer and one batch.
//!
//! # Layout
//! - `mod.rs`: the shared types ([`FileKind`], [`ReadReport`], [`ReadError`], [`Batch`]) and
//!   [`read_any`].
//! - `detect.rs`: [`detect`], shape detection and column matching by pattern.
//! - `reader.rs`: the streaming loop shared by every reader (BOM, blank lines, column counts,
//!   batching, bad-row accounting).
//! - `postcode.rs`: [`normalise_postcode`].
//! - [`nhs_number_is_valid`] is `domain::nhs::is_valid`, re-exported.
//! - `postcodes.rs`: [`read_postcodes`] for NHSPD, NSPL and ONSPD.
//! - `practices.rs`: [`read_practices`] for ODS epraccur.
//! - `code_map.rs`: [`read_code_map`] for the ONS sub-ICB GSS→ODS lookups.
//! - `demographics.rs`: [`read_demographics`] for our demographics CSV.
//!
//! # Files read
//!
//! | Kind | Shape | Rows produced |
//! |---|---|---|
//! | NHSPD (`Data/nhg*.csv`) | no header, 43 or 49 quoted columns, postcodes in columns 1–2 | [`PostcodeRow`]: sub-ICB from column 18 (ODS), local authority from columns 8 (ODS, top tier) and 9 (GSS), country column 13, terminated when column 4 (`DOTERM`) is set |
//! | NSPL, ONSPD | header row; columns found by pattern | [`PostcodeRow`]: sub-ICB (`sicbl`, `ccg`, `sicblNNcd`), local authority (`laua`, `oslaua`, `ladNNcd`), country (`ctry`, `ctryNNcd`), all GSS; terminated when `doterm` is set |
//! | epraccur | no header, 27 quoted columns | [`PracticeRow`]: code column 1, parent column 15 (commissioner), closed when column 13 is `C` or column 12 (close date) is set |
//! | sub-ICB lookup | header with `SICBLnnCD` and `SICBLnnCDH` (also `LOCnnCD`, `CCGnnCD`) | [`CodeMapRow`]: GSS `…CD` ↔ ODS `…CDH` |
//! | demographics | our header, below | [`PatientRecord`] |
//!
//! NSPL and ONSPD are told apart by their columns: a header with ONSPD-only columns
//! (`oscty`, `osward`, `oslaua`, `parish`, `parncpNNcd`, `oa01`, `oa01cd`, `statsward`,
//! `casward`, `wdstlNNcd`, `wdcasNNcd`) or 50 or more columns is ONSPD. Both give the same
//! rows. Postcode columns are tried in the order `pcds`, `pcd7`, `pcd`, `pcd8`, `pcd2`.
//!
//! Every reader tolerates a UTF-8 BOM, quoted or bare fields, CRLF line ends and blank lines
//! (ignored, not counted). A line repeating the header (as when ONS per-area files are
//! concatenated) is skipped and counted in [`ReadReport::skipped`].
//!
//! The framing is strict: a record never spans lines (the official files have no line
//! breaks inside fields). A line ending inside a quoted field (an unclosed quote) is a bad
//! row and the next line is read as its own row. Codes are checked per column: countries
//! and the GSS columns have the GSS shape (`[EWSNLM]` and eight digits), sub-ICB columns
//! GSS or an ODS code of 3 or 5 characters, NHSPD's ODS local authority column an ODS code
//! of 3 characters; a code of another shape (`country=XYZ`) makes the row bad.
//!
//! # Decisions
//! - Codes are copied as the file gives them (trimmed, upper case), including ONS pseudo
//!   codes such as `E99999999`; an empty code is left out, and a postcode row with no area
//!   codes at all (no grid reference) is still valid.
//! - epraccur rows of every prescribing setting are kept, not only GP practices (setting 4):
//!   a patient's registered practice comes from PDS, and dropping other settings could only
//!   lose matches. Dormant (`D`) and proposed (`P`) practices are not closed. A practice with
//!   no commissioner is kept with an empty parent.
//! - The sub-ICB lookups give only sub-ICB pairs (not ICB or region pairs, which no rule
//!   uses). A row missing either code (for example a Scottish board with no ODS code) is
//!   skipped by design.
//! - A bad row's reason names the column (header name, or number in headerless files) and
//!   never quotes a value, so reports can be logged. At most [`MAX_BAD_ROW_EXAMPLES`] are kept;
//!   [`ReadReport::bad`] counts them all.
//!
//! # Demographics CSV
//!
//! Our bulk format for the demographics store: UTF-8 (BOM allowed), comma-separated, quoting
//! optional, one header row with these eight columns (any order, names case-insensitive):
//!
//! ```text
//! nhs_number,birth_date,postcode,previous_postcode,gp_practice,flag,date_of_death,last_updated
//! 9990000018,1984-03-02,LS1 4AP,,B86001,,,2024-01-31T09:00:00+00:00
//! ```
//!
//! | Column | Required | Format |
//! |---|---|---|
//! | `nhs_number` | yes | 10 digits passing the Modulus 11 check |
//! | `birth_date` | no | `YYYY-MM-DD` |
//! | `postcode` | no | current home postcode, any spacing; stored normalised (`LS14AP`) |
//! | `previous_postcode` | no | previous home postcode, same format |
//! | `gp_practice` | no | registered practice ODS code; empty when unregistered |
//! | `flag` | no | empty, `S` (sensitive) or `I` (invalid) |
//! | `date_of_death` | no | `YYYY-MM-DD`, not before `birth_date` |
//! | `last_updated` | yes | FHIR instant with offset, e.g. `2024-01-31T09:00:00+00:00` |

use std::fmt;

use nems_proto::v1::{CodeMapRow, PatientRecord, PostcodeRow, PracticeRow, ReferenceDataSet};

mod code_map;
mod demographics;
mod detect;
mod postcode;
mod postcodes;
mod practices;
mod reader;

pub use crate::domain::nhs::is_valid as nhs_number_is_valid;
pub use code_map::read_code_map;
pub use demographics::read_demographics;
pub use detect::detect;
pub use postcode::normalise_postcode;
pub use postcodes::read_postcodes;
pub use practices::read_practices;

/// A batch size that keeps each gRPC message well under 4 MB for every row type.
pub const DEFAULT_BATCH_SIZE: usize = 5_000;

/// Most bad rows kept as examples in a [`ReadReport`].
pub const MAX_BAD_ROW_EXAMPLES: usize = 100;

/// The shape of a file, as detected from its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// NHS Postcode Directory (`nhg*.csv`): headerless, 43 or 49 columns, ODS codes.
    Nhspd,
    /// ONS National Statistics Postcode Lookup: header row, GSS codes.
    Nspl,
    /// ONS Postcode Directory: header row, GSS codes, more historic columns than the NSPL.
    Onspd,
    /// ODS GP practices and prescribing cost centres: headerless, 27 columns.
    Epraccur,
    /// ONS sub-ICB location names-and-codes file or sub-ICB → ICB → region lookup.
    SubIcbCodeMap,
    /// Our demographics bulk CSV (see the module docs).
    Demographics,
}

/// A file refused because it is not of an expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}; found {found}")]
pub struct Refusal {
    /// The formats that would have been accepted.
    pub expected: &'static str,
    /// What the file looks like: its kind, or its column count and header names (never
    /// values from a data row).
    pub found: String,
}

/// Why a read stopped. `E` is the batch callback's error type.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The file is not of a shape this reader accepts; nothing was passed to the callback.
    #[error("file refused: {0}")]
    Refused(#[source] Refusal),
    /// Reading the input failed.
    #[error("reading the file failed")]
    Io(#[source] std::io::Error),
    /// The batch callback failed; reading stopped there.
    #[error("the batch consumer failed")]
    Sink(#[source] E),
}

/// What a finished read did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// The detected file shape.
    pub kind: FileKind,
    /// Rows passed to the callback.
    pub accepted: u64,
    /// Rows left out by design (repeated header lines, lookup rows without an ODS code).
    pub skipped: u64,
    /// Rows refused as malformed.
    pub bad: u64,
    /// The first [`MAX_BAD_ROW_EXAMPLES`] bad rows, in file order.
    pub bad_rows: Vec<BadRow>,
}

/// One malformed row: where it is and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// Line number in the file (1-based, counting the header and blank lines).
    pub line: u64,
    /// Short reason naming the column, without the value (for example
    /// `column pcds: not a valid postcode`).
    pub reason: String,
}

/// A batch of rows of whichever kind [`read_any`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch {
    /// Rows of an NHSPD, NSPL or ONSPD file.
    Postcodes(Vec<PostcodeRow>),
    /// Rows of an epraccur file.
    Practices(Vec<PracticeRow>),
    /// Rows of a sub-ICB lookup.
    CodeMap(Vec<CodeMapRow>),
    /// Rows of a demographics CSV.
    Patients(Vec<PatientRecord>),
}

/// Reads a file of any known kind, detected from its first line, handing batches of at most
/// `batch_size` rows (at least 1) to `on_batch`.
///
/// # Errors
/// [`ReadError::Refused`] for a file of no known shape (naming every accepted format),
/// [`ReadError::Io`] when reading fails, [`ReadError::Sink`] when `on_batch` fails.
pub fn read_any<R: std::io::Read, E>(
    input: R,
    batch_size: usize,
    mut on_batch: impl FnMut(Batch) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    let all = [
        FileKind::Nhspd,
        FileKind::Nspl,
        FileKind::Onspd,
        FileKind::Epraccur,
        FileKind::SubIcbCodeMap,
        FileKind::Demographics,
    ];
    let source = reader::open(input, detect::EXPECTED_ANY, &all)?;
    match source.detected.kind {
        FileKind::Nhspd | FileKind::Nspl | FileKind::Onspd => {
            postcodes::read_source(source, batch_size, |rows| on_batch(Batch::Postcodes(rows)))
        }
        FileKind::Epraccur => {
            practices::read_source(source, batch_size, |rows| on_batch(Batch::Practices(rows)))
        }
        FileKind::SubIcbCodeMap => {
            code_map::read_source(source, batch_size, |rows| on_batch(Batch::CodeMap(rows)))
        }
        FileKind::Demographics => {
            demographics::read_source(source, batch_size, |rows| on_batch(Batch::Patients(rows)))
        }
    }
}

// === FileKind ===

impl FileKind {
    /// Returns the format name used in `ImportHeader.format`: `NHSPD`, `NSPL`, `ONSPD`,
    /// `EPRACCUR`, `SICBL_CODES` or `DEMOGRAPHICS`.
    pub const fn format_name(self) -> &'static str {
        match self {
            Self::Nhspd => "NHSPD",
            Self::Nspl => "NSPL",
            Self::Onspd => "ONSPD",
            Self::Epraccur => "EPRACCUR",
            Self::SubIcbCodeMap => "SICBL_CODES",
            Self::Demographics => "DEMOGRAPHICS",
        }
    }

    /// Returns the reference data set a file of this kind replaces; `None` for demographics,
    /// which are imported separately.
    pub const fn data_set(self) -> Option<ReferenceDataSet> {
        match self {
            Self::Nhspd | Self::Nspl | Self::Onspd => Some(ReferenceDataSet::Postcodes),
            Self::Epraccur => Some(ReferenceDataSet::Practices),
            Self::SubIcbCodeMap => Some(ReferenceDataSet::CodeMap),
            Self::Demographics => None,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nhspd => "NHSPD (NHS Postcode Directory)",
            Self::Nspl => "NSPL (National Statistics Postcode Lookup)",
            Self::Onspd => "ONSPD (ONS Postcode Directory)",
            Self::Epraccur => "epraccur (GP practices)",
            Self::SubIcbCodeMap => "a sub-ICB code lookup",
            Self::Demographics => "the demographics CSV",
        })
    }
}

// === ReadReport ===

impl fmt::Display for ReadReport {
    /// Summarises the read in one line, for logs and the import command's output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} rows accepted, {} skipped, {} bad",
            self.kind.format_name(),
            self.accepted,
            self.skipped,
            self.bad
        )
    }
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

// === Refusal ===

impl Refusal {
    /// Builds a refusal.
    pub(crate) fn new(expected: &'static str, found: String) -> Self {
        Self { expected, found }
    }
}
