//! The Spine directory tables.

use nems_proto::v1 as pb;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::tables::{MAILBOXES, SYSTEMS};

/// Reads every system and mailbox.
pub(crate) fn load(
    tx: &ReadTransaction,
) -> Result<(Vec<pb::SpineSystem>, Vec<pb::MeshMailbox>), StoreError> {
    let mut systems = Vec::new();
    for item in tx.open_table(SYSTEMS)?.iter()? {
        let (_, v) = item?;
        systems.push(pb::SpineSystem::decode(v.value())?);
    }
    let mut mailboxes = Vec::new();
    for item in tx.open_table(MAILBOXES)?.iter()? {
        let (_, v) = item?;
        mailboxes.push(pb::MeshMailbox::decode(v.value())?);
    }
    Ok((systems, mailboxes))
}

/// Creates or replaces a system; returns true when it replaced one.
pub(crate) fn put_system(tx: &WriteTransaction, s: &pb::SpineSystem) -> Result<bool, StoreError> {
    let mut table = tx.open_table(SYSTEMS)?;
    let old = table.insert(s.asid.as_str(), s.encode_to_vec().as_slice())?;
    Ok(old.is_some())
}

/// Removes a system; returns true when it existed.
pub(crate) fn delete_system(tx: &WriteTransaction, asid: &str) -> Result<bool, StoreError> {
    let mut table = tx.open_table(SYSTEMS)?;
    let old = table.remove(asid)?;
    Ok(old.is_some())
}

/// Creates or replaces a mailbox; returns true when it replaced one.
pub(crate) fn put_mailbox(tx: &WriteTransaction, m: &pb::MeshMailbox) -> Result<bool, StoreError> {
    let mut table = tx.open_table(MAILBOXES)?;
    let old = table.insert(m.mailbox_id.as_str(), m.encode_to_vec().as_slice())?;
    Ok(old.is_some())
}

/// Removes a mailbox; returns true when it existed.
pub(crate) fn delete_mailbox(tx: &WriteTransaction, id: &str) -> Result<bool, StoreError> {
    let mut table = tx.open_table(MAILBOXES)?;
    let old = table.remove(id)?;
    Ok(old.is_some())
}
