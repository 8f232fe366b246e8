//! Our demographics bulk CSV (format in the module docs of [`super`]).

use std::io::Read;

use nems_proto::v1::{PatientFlag, PatientRecord};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::detect::{DEMOGRAPHICS_COLUMNS, Layout, is_ods_code};
use super::nhs_number_is_valid;
use super::postcode::normalise_postcode;
use super::reader::{self, Fields, Source};
use super::{FileKind, ReadError, ReadReport};

/// What [`read_demographics`] accepts, for refusals.
const EXPECTED: &str = "the demographics CSV (header nhs_number,birth_date,postcode,\
     previous_postcode,gp_practice,flag,date_of_death,last_updated)";

/// Reads a demographics CSV, handing [`PatientRecord`] batches of at most `batch_size`
/// records to `on_batch`.
///
/// Postcodes come out normalised (`LS14AP`), practice codes upper-cased, the flag as
/// [`PatientFlag`]; dates and `last_updated` as written. A row failing any check in the
/// module docs is reported as bad, naming the column.
///
/// # Errors
/// [`ReadError::Refused`] when the file is not a demographics CSV, [`ReadError::Io`] when
/// reading fails, [`ReadError::Sink`] when `on_batch` fails.
pub fn read_demographics<R: Read, E>(
    input: R,
    batch_size: usize,
    on_batch: impl FnMut(Vec<PatientRecord>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    let source = reader::open(input, EXPECTED, &[FileKind::Demographics])?;
    read_source(source, batch_size, on_batch)
}

/// Reads an opened demographics CSV.
pub(super) fn read_source<R: Read, E>(
    source: Source<R>,
    batch_size: usize,
    on_batch: impl FnMut(Vec<PatientRecord>) -> Result<(), E>,
) -> Result<ReadReport, ReadError<E>> {
    let index = match source.detected.layout {
        Layout::Demographics(index) => index,
        // `open` only lets demographics files through.
        _ => std::array::from_fn(|i| i),
    };
    source.run(batch_size, |fields| patient(fields, &index), on_batch)
}

/// The demographics columns, in [`DEMOGRAPHICS_COLUMNS`] order.
#[derive(Clone, Copy)]
enum Column {
    NhsNumber,
    BirthDate,
    Postcode,
    PreviousPostcode,
    GpPractice,
    Flag,
    DateOfDeath,
    LastUpdated,
}

/// Builds a record from a demographics row.
fn patient(fields: &Fields<'_>, index: &[usize; 8]) -> Result<Option<PatientRecord>, String> {
    let get = |column: Column| fields.text(index[column as usize]);
    let bad = |column: Column, why: &str| {
        let name = DEMOGRAPHICS_COLUMNS[column as usize];
        format!("column {name}: {why}")
    };

    let nhs_number = get(Column::NhsNumber)?;
    if !nhs_number_is_valid(nhs_number) {
        return Err(bad(Column::NhsNumber, "not a valid NHS number"));
    }
    let birth_date = get(Column::BirthDate)?;
    let born = optional_date(birth_date).ok_or_else(|| bad(Column::BirthDate, "not a date"))?;
    let postcode = optional_postcode(get(Column::Postcode)?)
        .ok_or_else(|| bad(Column::Postcode, "not a valid postcode"))?;
    let previous_postcode = optional_postcode(get(Column::PreviousPostcode)?)
        .ok_or_else(|| bad(Column::PreviousPostcode, "not a valid postcode"))?;
    let gp_practice = get(Column::GpPractice)?.to_ascii_uppercase();
    if !gp_practice.is_empty() && !is_ods_code(&gp_practice) {
        return Err(bad(Column::GpPractice, "not an ODS code"));
    }
    let flag = match get(Column::Flag)? {
        "" => PatientFlag::Unspecified,
        "S" | "s" => PatientFlag::Sensitive,
        "I" | "i" => PatientFlag::Invalid,
        _ => return Err(bad(Column::Flag, "not empty, S or I")),
    };
    let date_of_death = get(Column::DateOfDeath)?;
    let died =
        optional_date(date_of_death).ok_or_else(|| bad(Column::DateOfDeath, "not a date"))?;
    if let (Some(born), Some(died)) = (born, died)
        && died < born
    {
        return Err(bad(Column::DateOfDeath, "before birth_date"));
    }
    let last_updated = get(Column::LastUpdated)?;
    if OffsetDateTime::parse(last_updated, &Rfc3339).is_err() {
        return Err(bad(
            Column::LastUpdated,
            "not an instant with offset (YYYY-MM-DDThh:mm:ss+hh:mm)",
        ));
    }
    Ok(Some(PatientRecord {
        nhs_number: nhs_number.to_owned(),
        postcode,
        previous_postcode,
        gp_practice,
        birth_date: birth_date.to_owned(),
        flag: flag as i32,
        date_of_death: date_of_death.to_owned(),
        last_updated: last_updated.to_owned(),
    }))
}

/// Parses an optional `YYYY-MM-DD` date: `Some(None)` when empty, `None` when malformed.
fn optional_date(text: &str) -> Option<Option<Date>> {
    if text.is_empty() {
        return Some(None);
    }
    Date::parse(text, format_description!("[year]-[month]-[day]"))
        .ok()
        .map(Some)
}

/// Normalises an optional postcode: empty stays empty, `None` when malformed.
fn optional_postcode(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some(String::new());
    }
    normalise_postcode(text)
}
