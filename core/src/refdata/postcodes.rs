//! Postcode files: NHSPD (ODS codes, headerless) and NSPL/ONSPD (GSS codes, header row).

use std::io::Read;

use nems_proto::v1::PostcodeRow;

use super::detect::{Layout, OnsColumns, is_gss_code, is_short_ods_code, is_sub_icb_code};
use super::postcode::normalise_postcode;
use super::reader::{self, Fields, Source};
use super::{FileKind, ReadError, ReadReport};

/// What [`read_postcodes`] accepts, for refusals.
const EXPECTED: &str = "a postcode file: NHSPD (headerless, 43 or 49 columns, postcodes in \
     columns 1-2) or NSPL/ONSPD (header with pcd/pcd7/pcds, doterm, laua/oslaua/ladNNcd, \
     ctry/ctryNNcd, sicbl/ccg/sicblNNcd)";

/// NHSPD columns (0-based) of the 43- and 49-column layouts.
mod nhspd {
    pub(super) const PCD2: usize = 0;
    pub(super) const PCDS: usize = 1;
    pub(super) const DOTERM: usize = 3;
    pub(super) const ODSLAUA: usize = 7;
    pub(super) const OSLAUA: usize = 8;
    pub(super) const CTRY: usize = 12;
    pub(super) const SUB_ICB: usize = 17;
}

/// Reads an NHSPD, NSPL or ONSPD file, handing [`PostcodeRow`] batches of at most
/// `batch_size` rows to `on_batch`.
///
/// NHSPD rows carry ODS codes: the sub-ICB location (column 18) and the top-tier local
/// authority (column 8), plus the GSS local authority (column 9) and country (column 13).
/// NSPL/ONSPD rows carry GSS codes only: join them to ODS codes with [`super::read_code_map`].
/// A row is terminated when its `doterm` is set. Area codes may be empty (no grid reference).
///
/// # Errors
/// [`ReadError::Refused`] when the file is not a postcode file, [`ReadError::Io`] when reading
/// fails, [`ReadError::Sink`] when `on_batch` fails.
pub fn read_postcodes<R: Read, E>(
    input: R,
    batch_size: usize,
    on_batch: impl FnMut(Vec<PostcodeRow>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    let allowed = [FileKind::Nhspd, FileKind::Nspl, FileKind::Onspd];
    let source = reader::open(input, EXPECTED, &allowed)?;
    read_source(source, batch_size, on_batch)
}

/// Reads an opened postcode file.
pub(super) fn read_source<R: Read, E>(
    source: Source<R>,
    batch_size: usize,
    on_batch: impl FnMut(Vec<PostcodeRow>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    match source.detected.layout.clone() {
        Layout::Ons(columns) => {
            source.run(batch_size, |fields| ons_row(fields, &columns), on_batch)
        }
        _ => source.run(batch_size, nhspd_row, on_batch),
    }
}

/// Builds a row from an NHSPD record.
fn nhspd_row(fields: &Fields<'_>) -> Result<Option<PostcodeRow>, String> {
    let postcode = first_postcode(fields, &[nhspd::PCDS, nhspd::PCD2])?;
    let mut sub_icb = Vec::with_capacity(1);
    push_code(&mut sub_icb, fields, nhspd::SUB_ICB, Shape::SubIcb)?;
    let mut local_authority = Vec::with_capacity(2);
    push_code(
        &mut local_authority,
        fields,
        nhspd::ODSLAUA,
        Shape::OdsLocalAuthority,
    )?;
    push_code(&mut local_authority, fields, nhspd::OSLAUA, Shape::Gss)?;
    Ok(Some(PostcodeRow {
        postcode,
        sub_icb,
        local_authority,
        country: country(fields, nhspd::CTRY)?,
        terminated: !fields.text(nhspd::DOTERM)?.is_empty(),
    }))
}

/// Builds a row from an NSPL or ONSPD record.
fn ons_row(fields: &Fields<'_>, columns: &OnsColumns) -> Result<Option<PostcodeRow>, String> {
    let postcode = first_postcode(fields, &columns.postcodes)?;
    let mut sub_icb = Vec::with_capacity(1);
    push_code(&mut sub_icb, fields, columns.sub_icb, Shape::SubIcb)?;
    let mut local_authority = Vec::with_capacity(1);
    push_code(
        &mut local_authority,
        fields,
        columns.local_authority,
        Shape::Gss,
    )?;
    Ok(Some(PostcodeRow {
        postcode,
        sub_icb,
        local_authority,
        country: country(fields, columns.country)?,
        terminated: !fields.text(columns.doterm)?.is_empty(),
    }))
}

/// The code shape a column must have.
#[derive(Clone, Copy)]
enum Shape {
    /// GSS (`E08000035`).
    Gss,
    /// A sub-ICB location: GSS, or ODS of 3 or 5 characters.
    SubIcb,
    /// An ODS local authority code (3 characters, `713`), or GSS.
    OdsLocalAuthority,
}

impl Shape {
    fn accepts(self, code: &str) -> bool {
        match self {
            Shape::Gss => is_gss_code(code),
            Shape::SubIcb => is_sub_icb_code(code),
            Shape::OdsLocalAuthority => is_short_ods_code(code, &[3]) || is_gss_code(code),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Shape::Gss => "not a GSS code",
            Shape::SubIcb => "not a sub-ICB code (GSS, or ODS of 3 or 5 characters)",
            Shape::OdsLocalAuthority => "not a local authority code (ODS of 3 characters, or GSS)",
        }
    }
}

/// Returns the country code of column `index` upper-cased (GSS, or empty), or a reason.
fn country(fields: &Fields<'_>, index: usize) -> Result<String, String> {
    let code = fields.text(index)?.to_ascii_uppercase();
    if code.is_empty() || is_gss_code(&code) {
        Ok(code)
    } else {
        Err(format!("{}: not a GSS country code", fields.name(index)))
    }
}

/// Returns the first of `columns` holding a valid postcode, normalised.
fn first_postcode(fields: &Fields<'_>, columns: &[usize]) -> Result<String, String> {
    for &column in columns {
        if let Some(postcode) = normalise_postcode(fields.text(column)?) {
            return Ok(postcode);
        }
    }
    let named = columns
        .first()
        .map_or_else(String::new, |&c| fields.name(c));
    Err(format!("{named}: not a valid postcode"))
}

/// Appends column `index` upper-cased unless it is empty; a code not of `shape` makes the
/// row bad (the reason names the column, not the value).
fn push_code(
    codes: &mut Vec<String>,
    fields: &Fields<'_>,
    index: usize,
    shape: Shape,
) -> Result<(), String> {
    let code = fields.text(index)?;
    if code.is_empty() {
        return Ok(());
    }
    let code = code.to_ascii_uppercase();
    if !shape.accepts(&code) {
        return Err(format!("{}: {}", fields.name(index), shape.describe()));
    }
    codes.push(code);
    Ok(())
}
