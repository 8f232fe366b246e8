//! The seam's views over a PostgreSQL connection or transaction: the lookups matching
//! makes ([`MatchView`]) and the acceptance writes ([`AcceptTx`]), so that the matching and
//! acceptance code written once for every engine runs here statement by statement inside
//! the acceptance transaction.

use super::Db;
use nems_proto::v1 as pb;
use prost::Message;

use super::error::{decode, pg};
use super::{ledger, parse_uuid};
use crate::backend::{
    AcceptTx, Accepted, MatchEntry, MatchView, NewEvent, RefMeta, StoreError, StoredPatient,
};
use crate::domain::patient::DemographicUpdate;

/// A connection or a transaction seen through the seam.
pub(crate) struct Pg<'c, C>(pub(crate) &'c C);

/// The slot in force of a reference data set, if it has one.
pub(crate) async fn active_slot(c: &impl Db, set: usize) -> Result<Option<i16>, StoreError> {
    Ok(slot_in_force(&ref_meta(c, set).await?))
}

/// The slot in force of a set with this metadata, if it has one.
pub(crate) fn slot_in_force(meta: &RefMeta) -> Option<i16> {
    (meta.generation > 0).then_some((meta.active_slot & 1) as i16)
}

/// A reference data set's metadata (never imported: generation 0, no slot filling).
pub(crate) async fn ref_meta(c: &impl Db, set: usize) -> Result<RefMeta, StoreError> {
    let row = c
        .fetch_opt(
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

/// A row of the set in force (`slot`: its slot, when already known).
async fn ref_row(
    c: &impl Db,
    set: usize,
    slot: Option<Option<i16>>,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let slot = match slot {
        Some(slot) => slot,
        None => active_slot(c, set).await?,
    };
    let Some(slot) = slot else {
        return Ok(None);
    };
    let row = c
        .fetch_opt(
            "SELECT record FROM nems_ref_rows WHERE set_index = $1 AND slot = $2 AND key = $3",
            &[&(set as i16), &slot, &key],
        )
        .await
        .map_err(pg)?;
    Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
}

/// Decodes `(id text, entry bytea)` rows.
fn entries(rows: Vec<tokio_postgres::Row>) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
    entries_of(
        rows.iter()
            .map(|row| (row.get::<_, &str>(0), row.get::<_, &[u8]>(1))),
    )
}

/// Decodes `(id text, entry bytes)` pairs of the match index.
pub(crate) fn entries_of<'r>(
    pairs: impl Iterator<Item = (&'r str, &'r [u8])>,
) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
    pairs
        .map(|(id, entry)| {
            let id = parse_uuid(id)
                .ok_or_else(|| StoreError::Corrupt("a match index id is not a uuid".into()))?;
            Ok((id, MatchEntry::decode(entry).map_err(decode)?))
        })
        .collect()
}

/// The stored patient.
pub(crate) async fn stored_patient(
    c: &impl Db,
    nhs: u64,
) -> Result<Option<StoredPatient>, StoreError> {
    let row = c
        .fetch_opt(
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
    c: &impl Db,
    u: &DemographicUpdate,
) -> Result<bool, StoreError> {
    // The row is locked first, so that two updates of one patient merge in turn.
    let row = c
        .fetch_opt(
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
    c.run(
        "INSERT INTO nems_patients (nhs_number, record) VALUES ($1, $2)
         ON CONFLICT (nhs_number) DO UPDATE SET record = EXCLUDED.record",
        &[&(u.nhs as i64), &stored.encode_to_vec()],
    )
    .await
    .map_err(pg)?;
    Ok(true)
}

/// The match lookups over `c`; `slots`: the slot in force of each reference data set,
/// when read already (`None`: read it with the lookup).
struct Lookups<'c, C> {
    c: &'c C,
    slots: Option<[Option<i16>; 3]>,
}

impl<C: Db> Lookups<'_, C> {
    fn slot(&self, set: usize) -> Option<Option<i16>> {
        self.slots.map(|s| s[set])
    }

    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
        Ok(stored_patient(self.c, nhs).await?.and_then(|p| p.record))
    }

    async fn postcode(&self, key: &str) -> Result<Option<pb::PostcodeRow>, StoreError> {
        let Some(bytes) = ref_row(self.c, 0, self.slot(0), key).await? else {
            return Ok(None);
        };
        let mut row = pb::PostcodeRow::decode(bytes.as_slice()).map_err(decode)?;
        row.postcode = key.to_string();
        Ok(Some(row))
    }

    async fn practice(&self, code: &str) -> Result<Option<pb::PracticeRow>, StoreError> {
        let Some(bytes) = ref_row(self.c, 1, self.slot(1), code).await? else {
            return Ok(None);
        };
        let mut row = pb::PracticeRow::decode(bytes.as_slice()).map_err(decode)?;
        row.code = code.to_string();
        Ok(Some(row))
    }

    async fn equivalents(&self, code: &str) -> Result<Vec<String>, StoreError> {
        let Some(bytes) = ref_row(self.c, 2, self.slot(2), code).await? else {
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
            .c
            .fetch(
                "SELECT id::text, entry FROM nems_match_nhs WHERE nhs_number = $1 ORDER BY id",
                &[&(nhs as i64)],
            )
            .await
            .map_err(pg)?;
        entries(rows)
    }

    async fn generic(&self, key: &str) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
        let rows = self
            .c
            .fetch(
                "SELECT id::text, entry FROM nems_match_rule WHERE rule_key = $1 ORDER BY id",
                &[&key],
            )
            .await
            .map_err(pg)?;
        entries(rows)
    }
}

/// Implements [`MatchView`] for a type by its `lookups()`.
macro_rules! match_view {
    ([$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> MatchView for $ty {
            async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
                self.lookups().patient(nhs).await
            }
            async fn postcode(&self, key: &str) -> Result<Option<pb::PostcodeRow>, StoreError> {
                self.lookups().postcode(key).await
            }
            async fn practice(&self, code: &str) -> Result<Option<pb::PracticeRow>, StoreError> {
                self.lookups().practice(code).await
            }
            async fn equivalents(&self, code: &str) -> Result<Vec<String>, StoreError> {
                self.lookups().equivalents(code).await
            }
            async fn explicit(&self, nhs: u64) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
                self.lookups().explicit(nhs).await
            }
            async fn generic(&self, key: &str) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
                self.lookups().generic(key).await
            }
        }
    };
}

impl<C: Db> Pg<'_, C> {
    fn lookups(&self) -> Lookups<'_, C> {
        Lookups {
            c: self.0,
            slots: None,
        }
    }
}

match_view!([C: Db] Pg<'_, C>);

/// What an acceptance read of its patient when it began (`nems_accept_begin`).
pub(crate) struct Prefetched {
    /// The patient.
    pub(crate) nhs: u64,
    /// Their demographics record.
    pub(crate) patient: std::sync::Mutex<Option<Option<pb::PatientRecord>>>,
    /// The explicit subscriptions' match entries for them.
    pub(crate) explicit: std::sync::Mutex<Option<Vec<(u128, MatchEntry)>>>,
}

/// The acceptance transaction seen through the seam: its event's sequence number, the
/// reference data slots in force and what it read of its patient, all read when it began
/// (one statement with the barrier, so after it).
pub(crate) struct Accepting<'c, 't> {
    pub(crate) tx: &'c deadpool_postgres::Transaction<'t>,
    /// Where its event, deliveries and audit row go, written with its group's.
    pub(crate) staged: &'c std::sync::Mutex<ledger::Staged>,
    pub(crate) seq: u64,
    pub(crate) slots: [Option<i16>; 3],
    pub(crate) prefetched: Option<Prefetched>,
}

impl Accepting<'_, '_> {
    fn lookups(&self) -> Lookups<'_, deadpool_postgres::Transaction<'_>> {
        Lookups {
            c: self.tx,
            slots: Some(self.slots),
        }
    }
}

impl MatchView for Accepting<'_, '_> {
    async fn patient(&self, nhs: u64) -> Result<Option<pb::PatientRecord>, StoreError> {
        if let Some(p) = self.prefetched.as_ref().filter(|p| p.nhs == nhs)
            && let Some(record) = take(&p.patient)
        {
            return Ok(record);
        }
        self.lookups().patient(nhs).await
    }
    async fn postcode(&self, key: &str) -> Result<Option<pb::PostcodeRow>, StoreError> {
        self.lookups().postcode(key).await
    }
    async fn practice(&self, code: &str) -> Result<Option<pb::PracticeRow>, StoreError> {
        self.lookups().practice(code).await
    }
    async fn equivalents(&self, code: &str) -> Result<Vec<String>, StoreError> {
        self.lookups().equivalents(code).await
    }
    async fn explicit(&self, nhs: u64) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
        if let Some(p) = self.prefetched.as_ref().filter(|p| p.nhs == nhs)
            && let Some(entries) = take(&p.explicit)
        {
            return Ok(entries);
        }
        self.lookups().explicit(nhs).await
    }
    async fn generic(&self, key: &str) -> Result<Vec<(u128, MatchEntry)>, StoreError> {
        self.lookups().generic(key).await
    }
}

/// The group's staged rows (never held across an await).
fn staged(s: &std::sync::Mutex<ledger::Staged>) -> std::sync::MutexGuard<'_, ledger::Staged> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes a prefetched value (once; later asks read again).
fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    match slot.lock() {
        Ok(mut g) => g.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

impl AcceptTx for Accepting<'_, '_> {
    async fn insert_event(&self, event: &NewEvent) -> Result<Accepted, StoreError> {
        Ok(staged(self.staged).event(self.seq, event))
    }

    async fn apply_demographics(&self, update: &DemographicUpdate) -> Result<bool, StoreError> {
        apply_demographics(self.tx, update).await
    }

    async fn append_audit(&self, at_ms: u64, record: &pb::AuditRecord) -> Result<(), StoreError> {
        staged(self.staged).audit(at_ms, record);
        Ok(())
    }
}
