//! The demographics store: what PDS last told the service about each patient (home and
//! previous postcode, registered practice, birth and death, S/I flags), with the time of
//! each fact so that an older event or import never overwrites newer data.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::tables::PATIENTS;
use super::{Snapshot, StoreError};
use crate::backend::StoredPatient;
use crate::domain::patient::DemographicUpdate;

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
    let changed = stored.merge(u);
    if changed {
        table.insert(u.nhs, stored.encode_to_vec().as_slice())?;
    }
    Ok(changed)
}

/// Number of patients held.
pub(crate) fn count(tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(tx.open_table(PATIENTS)?.len()?)
}
