//! The seam's views over a PostgreSQL connection or transaction: the lookups matching
//! makes ([`MatchView`]) and the acceptance writes ([`AcceptTx`]), so that the matching and
//! acceptance code written once for every engine runs here statement by statement inside
//! the acceptance transaction.

use nems_proto::v1 as pb;
use prost::Message;
use tokio_postgres::GenericClient;

use super::error::{decode, pg};
use super::{audit, ledger, parse_uuid};
use crate::backend::{
    AcceptTx, Accepted, MatchEntry, MatchView, NewEvent, RefMeta, StoreError, StoredPatient,
};
use crate::domain::patient::DemographicUpdate;

/// A connection or a transaction seen through the seam.
pub(crate) struct Pg<'c, C>(pub(crate) &'c C);

/// The slot in force of a reference data set, if it has one.
pub(crate) async fn active_slot(
    c: &impl GenericClient,
    set: usize,
) -> Result<Option<i16>, StoreError> {
    let meta = ref_meta(c, set).await?;
    Ok((meta.generation > 0).then_some((meta.active_slot & 1) as i16))
}

/// A reference data set's metadata (never imported: generation 0, no slot filling).
pub(crate) async fn ref_meta(c: &impl GenericClient, set: usize) -> Result<RefMeta, StoreError> {
    let row = c
        .query_opt(
            "SELECT meta FROM nems_ref_meta WHERE set_index = $1",
            &[&(set as i16)],
        )
        .await
        .map_err(pg)?;
    match row {
        Some(row) => RefMeta::decode(row.get::<_, &[u8]>(0)).map_err(decode),
        None => Ok(RefMeta {
            filling_slot: u32::MAX,
            ..Default::default()
        }),
    }
}

/// A row of the set in force.
async fn ref_row(
    c: &impl GenericClient,
    set: usize,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(slot) = active_slot(c, set).await? else {
        return Ok(None);
    };
    let row = c
        .query_opt(
            "SELECT record FROM nems_ref_rows WHERE set_index = $1 AND slot = $2 AND key = $3",
            &[&(set as i16), &slot, &key],
        )
        .await
        .map_err(pg)?;
    Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
}

/// Decodes `(id text, entry bytea)` rows.
fn entries(rows: Vec<tokio_postgres::Row>) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
    rows.into_iter()
        .map(|row| {
            let id = parse_uuid(row.get(0))
                .ok_or_else(|| StoreError::Corrupt("a match index id is not a uuid".into()))?;
            Ok((
                id,
                MatchEntry::decode(row.get::<_, &[u8]>(1)).map_err(decode)?,
            ))
        })
        .collect()
}

/// The stored patient.
pub(crate) async fn stored_patient(
    c: &impl GenericClient,
    nhs: u64,
) -> Result<Option<StoredPatient>, StoreError> {
    let row = c
        .query_opt(
            "SELECT record FROM nems_patients WHERE nhs_number = $1",
            &[&(nhs as i64)],
        )
        .await
        .map_err(pg)?;
    row.map(|r| StoredPatient::decode(r.get::<_, &[u8]>(0)).map_err(decode))
        .transpose()
}

/// Applies a demographics update (fact by fact, newer wins); true when written.
pub(crate) async fn apply_demographics(
    c: &impl GenericClient,
    u: &DemographicUpdate,
) -> Result<bool, StoreError> {
    // The row is locked first, so that two updates of one patient merge in turn.
    let row = c
        .query_opt(
            "SELECT record FROM nems_patients WHERE nhs_number = $1 FOR UPDATE",
            &[&(u.nhs as i64)],
        )
        .await
        .map_err(pg)?;
    let mut stored = match row {
        Some(r) => StoredPatient::decode(r.get::<_, &[u8]>(0)).map_err(decode)?,
        None => StoredPatient {
            record: Some(pb::PatientRecord::default()),
            ..Default::default()
        },
    };
    if !stored.merge(u) {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO nems_patients (nhs_number, record) VALUES ($1, $2)
         ON CONFLICT (nhs_number) DO UPDATE SET record = EXCLUDED.record",
        &[&(u.nhs as i64), &stored.encode_to_vec()],
    )
    .await
    .map_err(pg)?;
    Ok(true)
}

impl<C: GenericClient + Sync> MatchView for Pg<'_, C> {
    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
        Ok(stored_patient(self.0, nhs).await?.and_then(|p| p.record))
    }

    async fn postcode(&self, key: &str) -> Result<Option<pb::PostcodeRow>, StoreError> {
        let Some(bytes) = ref_row(self.0, 0, key).await? else {
            return Ok(None);
        };
        let mut row = pb::PostcodeRow::decode(bytes.as_slice()).map_err(decode)?;
        row.postcode = key.to_string();
        Ok(Some(row))
    }

    async fn practice(&self, code: &str) -> Result<Option<pb::PracticeRow>, StoreError> {
        let Some(bytes) = ref_row(self.0, 1, code).await? else {
            return Ok(None);
        };
        let mut row = pb::PracticeRow::decode(bytes.as_slice()).map_err(decode)?;
        row.code = code.to_string();
        Ok(Some(row))
    }

    async fn equivalents(&self, code: &str) -> Result<Vec<String>, StoreError> {
        let Some(bytes) = ref_row(self.0, 2, code).await? else {
            return Ok(Vec::new());
        };
        Ok(String::from_utf8_lossy(&bytes)
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect())
    }

    async fn explicit(&self, nhs: u64) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
        let rows = self
            .0
            .query(
                "SELECT id::text, entry FROM nems_match_nhs WHERE nhs_number = $1 ORDER BY id",
                &[&(nhs as i64)],
            )
            .await
            .map_err(pg)?;
        entries(rows)
    }

    async fn generic(&self, key: &str) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
        let rows = self
            .0
            .query(
                "SELECT id::text, entry FROM nems_match_rule WHERE rule_key = $1 ORDER BY id",
                &[&key],
            )
            .await
            .map_err(pg)?;
        entries(rows)
    }
}

impl AcceptTx for Pg<'_, tokio_postgres::Transaction<'_>> {
    async fn insert_event(&self, event: &NewEvent) -> Result<Accepted, StoreError> {
        ledger::insert_event(self.0, event).await
    }

    async fn apply_demographics(&self, update: &DemographicUpdate) -> Result<bool, StoreError> {
        apply_demographics(self.0, update).await
    }

    async fn append_audit(&self, at_ms: u64, record: &pb::AuditRecord) -> Result<(), StoreError> {
        audit::append(self.0, at_ms, std::slice::from_ref(record), false).await
    }
}
