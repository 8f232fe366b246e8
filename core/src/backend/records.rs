//! Records both backends keep: prost messages whose encodings redb stores as values and
//! PostgreSQL as `bytea` columns beside the fields it indexes. Field tags are part of the
//! stored format: never reuse or renumber one.

use super::StoreError;
use nems_proto::v1 as pb;

/// A stored subscription.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredSubscription {
    /// The resource as the client sent it, without what the service assigns (`id`, `meta`,
    /// `status`), which are rebuilt on read.
    #[prost(message, optional, tag = "1")]
    pub(crate) resource: Option<pb::SubscriptionResource>,
    /// The parsed criteria.
    #[prost(message, optional, tag = "2")]
    pub(crate) criteria: Option<pb::Criteria>,
    /// Creating ASID.
    #[prost(string, tag = "3")]
    pub(crate) owner_asid: String,
    /// Contact ODS code (owner).
    #[prost(string, tag = "4")]
    pub(crate) owner_ods: String,
    /// Recipient mailbox (upper case).
    #[prost(string, tag = "5")]
    pub(crate) mailbox: String,
    /// Creation time.
    #[prost(uint64, tag = "6")]
    pub(crate) created_ms: u64,
    /// `end` (0: perpetual).
    #[prost(uint64, tag = "7")]
    pub(crate) end_ms: u64,
    /// Deletion time (0: live).
    #[prost(uint64, tag = "8")]
    pub(crate) deleted_ms: u64,
    /// Hash of the duplicate-detection key.
    #[prost(bytes = "vec", tag = "9")]
    pub(crate) dedup_hash: Vec<u8>,
}

impl StoredSubscription {
    /// The duplicate-detection key hash as a table key.
    pub(crate) fn dedup_key(&self) -> u128 {
        let mut bytes = [0u8; 16];
        let n = self.dedup_hash.len().min(16);
        bytes[..n].copy_from_slice(&self.dedup_hash[..n]);
        u128::from_be_bytes(bytes)
    }
}

/// What matching needs of a subscription, stored as the value of the match indexes so
/// that matching never loads whole subscriptions.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MatchEntry {
    /// Event codes (explicit: one or more; generic: one).
    #[prost(string, repeated, tag = "1")]
    pub(crate) event_codes: Vec<String>,
    /// Recipient mailbox.
    #[prost(string, tag = "2")]
    pub(crate) mailbox: String,
    /// Tag for `Mex-PartnerID` (empty: none).
    #[prost(string, tag = "3")]
    pub(crate) tag: String,
    /// Age filters.
    #[prost(message, repeated, tag = "4")]
    pub(crate) age: Vec<pb::AgeFilter>,
    /// GP registration filter (`pb::GpRegistration`).
    #[prost(int32, tag = "5")]
    pub(crate) gp_registration: i32,
    /// Creation time.
    #[prost(uint64, tag = "6")]
    pub(crate) created_ms: u64,
    /// `end` (0: perpetual).
    #[prost(uint64, tag = "7")]
    pub(crate) end_ms: u64,
}

/// The state of one reference data set.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RefMeta {
    /// Generation in force (0: never imported).
    #[prost(uint64, tag = "1")]
    pub(crate) generation: u64,
    /// Active slot (0 or 1).
    #[prost(uint32, tag = "2")]
    pub(crate) active_slot: u32,
    /// Rows in the active slot.
    #[prost(uint64, tag = "3")]
    pub(crate) rows: u64,
    /// Detected format of the source.
    #[prost(string, tag = "4")]
    pub(crate) format: String,
    /// Source file name.
    #[prost(string, tag = "5")]
    pub(crate) source: String,
    /// Slot being filled by an import in progress (`u32::MAX`: none).
    #[prost(uint32, tag = "6")]
    pub(crate) filling_slot: u32,
    /// When the set in force was switched in (ms since the epoch; 0: before this was
    /// recorded, or never imported).
    #[prost(uint64, tag = "7")]
    pub(crate) imported_ms: u64,
    /// Imports of the set begun so far (each one's ticket carries its number).
    #[prost(uint64, tag = "8")]
    pub(crate) imports: u64,
}

impl RefMeta {
    /// Begins an import that fills physical `slot`: its ticket, `slot` in the low bit and
    /// this import's number above it (never `u32::MAX`, "no import"). A later import's
    /// begin replaces the ticket in force, so an earlier import's next write or its finish
    /// finds its ticket stale and fails ([`RefMeta::check_ticket`]) instead of mixing
    /// rows into the slot the later one fills: imports of one set are exclusive across
    /// every core on the store, and the latest wins.
    pub(crate) fn begin_import(&mut self, slot: u32) -> u32 {
        self.imports = self.imports.wrapping_add(1);
        let ticket = (((self.imports as u32) & 0x3FFF_FFFF) << 1) | (slot & 1);
        self.filling_slot = ticket;
        ticket
    }

    /// Whether `ticket` is the import in progress on this set.
    pub(crate) fn check_ticket(&self, set: usize, ticket: u32) -> Result<(), StoreError> {
        if self.filling_slot == ticket {
            Ok(())
        } else {
            Err(StoreError::Superseded(format!(
                "another {} import began after this one and replaced it; this import is abandoned",
                crate::backend::SET_NAMES[set]
            )))
        }
    }
}

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

impl StoredPatient {
    /// Applies an update fact by fact: each fact is taken only when it is at least as new
    /// as what is held. True when anything changed.
    pub(crate) fn merge(&mut self, u: &crate::domain::patient::DemographicUpdate) -> bool {
        let mut changed = false;
        let record = self.record.get_or_insert_with(Default::default);
        if let Some((postcode, previous)) = &u.postcode
            && u.at_ms >= self.address_ms
        {
            record.postcode.clone_from(postcode);
            record.previous_postcode.clone_from(previous);
            self.address_ms = u.at_ms;
            changed = true;
        }
        if let Some(gp) = &u.gp_practice
            && u.at_ms >= self.gp_ms
        {
            record.gp_practice.clone_from(gp);
            self.gp_ms = u.at_ms;
            changed = true;
        }
        if let Some(flag) = u.flag
            && u.at_ms >= self.flag_ms
        {
            record.flag = flag.into();
            self.flag_ms = u.at_ms;
            changed = true;
        }
        if let Some(death) = &u.date_of_death
            && u.at_ms >= self.death_ms
        {
            record.date_of_death.clone_from(death);
            self.death_ms = u.at_ms;
            changed = true;
        }
        if let Some(birth) = &u.birth_date
            && u.at_ms >= self.birth_ms
        {
            record.birth_date.clone_from(birth);
            self.birth_ms = u.at_ms;
            changed = true;
        }
        if changed {
            let newest = [
                self.address_ms,
                self.gp_ms,
                self.flag_ms,
                self.death_ms,
                self.birth_ms,
            ]
            .into_iter()
            .max()
            .unwrap_or(0);
            record.last_updated = crate::domain::datetime::format_instant_ms(newest);
        }
        changed
    }
}
