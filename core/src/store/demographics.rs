//! The demographics store: what PDS last told the service about each patient (home and
//! previous postcode, registered practice, birth and death, S/I flags), with the time of
//! each fact so that an older event or import never overwrites newer data.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::tables::PATIENTS;
use super::{Snapshot, StoreError};
use crate::domain::patient::DemographicUpdate;

/// A stored patient: the record and when each group of facts last changed.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredPatient {
    /// The record (its `nhs_number` is the key and is left empty here).
    #[prost(message, optional, tag = "1")]
    pub(crate) record: Option<pb::PatientRecord>,
    /// When the home and previous postcodes last changed.
    #[prost(uint64, tag = "2")]
    pub(crate) address_ms: u64,
    /// When the registered practice last changed.
    #[prost(uint64, tag = "3")]
    pub(crate) gp_ms: u64,
    /// When the S/I flag last changed.
    #[prost(uint64, tag = "4")]
    pub(crate) flag_ms: u64,
    /// When death details last changed.
    #[prost(uint64, tag = "5")]
    pub(crate) death_ms: u64,
    /// When birth details last changed.
    #[prost(uint64, tag = "6")]
    pub(crate) birth_ms: u64,
}

/// Reads a patient.
pub(crate) fn get(tx: &impl Snapshot, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
    let table = tx.table(PATIENTS)?;
    match table.get(nhs)? {
        Some(bytes) => Ok(StoredPatient::decode(bytes.value())?.record),
        None => Ok(None),
    }
}

/// Applies an update fact by fact: each fact is written only when it is at least as new
/// as what is held. Returns true when anything changed.
pub(crate) fn apply(tx: &WriteTransaction, u: &DemographicUpdate) -> Result<bool, StoreError> {
    let mut table = tx.open_table(PATIENTS)?;
    let mut stored = match table.get(u.nhs)? {
        Some(bytes) => StoredPatient::decode(bytes.value())?,
        None => StoredPatient {
            record: Some(pb::PatientRecord::default()),
            ..Default::default()
        },
    };
    let mut changed = false;
    let record = stored.record.get_or_insert_with(Default::default);
    if let Some((postcode, previous)) = &u.postcode
        && u.at_ms >= stored.address_ms
    {
        record.postcode.clone_from(postcode);
        record.previous_postcode.clone_from(previous);
        stored.address_ms = u.at_ms;
        changed = true;
    }
    if let Some(gp) = &u.gp_practice
        && u.at_ms >= stored.gp_ms
    {
        record.gp_practice.clone_from(gp);
        stored.gp_ms = u.at_ms;
        changed = true;
    }
    if let Some(flag) = u.flag
        && u.at_ms >= stored.flag_ms
    {
        record.flag = flag.into();
        stored.flag_ms = u.at_ms;
        changed = true;
    }
    if let Some(death) = &u.date_of_death
        && u.at_ms >= stored.death_ms
    {
        record.date_of_death.clone_from(death);
        stored.death_ms = u.at_ms;
        changed = true;
    }
    if let Some(birth) = &u.birth_date
        && u.at_ms >= stored.birth_ms
    {
        record.birth_date.clone_from(birth);
        stored.birth_ms = u.at_ms;
        changed = true;
    }
    if changed {
        let newest = [
            stored.address_ms,
            stored.gp_ms,
            stored.flag_ms,
            stored.death_ms,
            stored.birth_ms,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        record.last_updated = crate::domain::datetime::format_instant_ms(newest);
        table.insert(u.nhs, stored.encode_to_vec().as_slice())?;
    }
    Ok(changed)
}

/// Number of patients held.
pub(crate) fn count(tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(tx.open_table(PATIENTS)?.len()?)
}
