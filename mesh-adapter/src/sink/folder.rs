//! The folder sink (the embedded default): each delivery becomes a pair of files under
//! `<dir>/<MAILBOX>/<WORKFLOW_ID>/`, like the official folder-based MESH client's outbox:
//! `<local_id>.dat` holds the payload exactly as published, and `<local_id>.ctl` is an XML
//! control file with the MESH headers (`To_DTS`, `WorkflowId`, `LocalId`, `PartnerId`,
//! `Subject`). The `.dat` is written first and the `.ctl` last, each to a temporary name,
//! fsynced and renamed, so a `.ctl` only ever names a complete `.dat`. Writing the same
//! delivery again (after a crash) replaces the files with identical content.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use nems_proto::v1 as pb;

use super::{Sink, SinkOutcome};

/// Consecutive failed writes after which the sink counts as failing (readiness false).
pub const UNREADY_AFTER_FAILURES: u32 = 3;

/// Whether the folder sink can write: consecutive failed writes since the last success.
#[derive(Debug, Default)]
pub struct FolderHealth {
    failures: AtomicU32,
}

impl FolderHealth {
    fn note(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
        } else {
            let _ = self
                .failures
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
        }
    }

    /// `Err` once [`UNREADY_AFTER_FAILURES`] writes in a row failed (or the folder could
    /// not be made at start).
    pub fn check(&self) -> Result<(), String> {
        let failures = self.failures.load(Ordering::Relaxed);
        if failures >= UNREADY_AFTER_FAILURES {
            Err(format!(
                "folder sink cannot write ({failures} attempts in a row failed); deliveries held"
            ))
        } else {
            Ok(())
        }
    }
}

/// Writes deliveries into a folder tree.
#[derive(Debug, Clone)]
pub struct FolderSink {
    root: PathBuf,
    from_mailbox: String,
    health: Arc<FolderHealth>,
}

impl FolderSink {
    /// A sink writing under `root`, naming `from_mailbox` as the sender in control files.
    pub fn new(root: impl Into<PathBuf>, from_mailbox: impl Into<String>) -> Self {
        FolderSink {
            root: root.into(),
            from_mailbox: from_mailbox.into(),
            health: Arc::default(),
        }
    }

    /// The sink's health (for the readiness check).
    pub fn health(&self) -> Arc<FolderHealth> {
        self.health.clone()
    }

    /// Makes the root folder at start: a folder that cannot be made (say, under a regular
    /// file) is logged and turns readiness false at once, before any delivery fails.
    pub fn prepare(&self) {
        if let Err(e) = std::fs::create_dir_all(&self.root) {
            tracing::warn!(folder = %self.root.display(), error = %e.kind(), "folder sink cannot create its folder; deliveries will be held until it can");
            self.health
                .failures
                .store(UNREADY_AFTER_FAILURES, Ordering::Relaxed);
        }
    }

    /// The folder a mailbox's deliveries of a workflow go to.
    pub fn folder(&self, mailbox: &str, workflow_id: &str) -> PathBuf {
        self.root.join(safe(mailbox)).join(safe(workflow_id))
    }

    fn write(&self, d: &pb::Delivery) -> std::io::Result<()> {
        let dir = self.folder(&d.mailbox, &d.workflow_id);
        std::fs::create_dir_all(&dir)?;
        let name = safe(&d.local_id);
        write_atomically(&dir, &format!("{name}.dat"), &d.payload)?;
        write_atomically(
            &dir,
            &format!("{name}.ctl"),
            control_file(d, &self.from_mailbox).as_bytes(),
        )?;
        sync_dir(&dir)
    }
}

impl Sink for FolderSink {
    async fn deliver(&self, delivery: &pb::Delivery) -> SinkOutcome {
        let this = self.clone();
        let d = delivery.clone();
        let written = tokio::task::spawn_blocking(move || this.write(&d)).await;
        self.health.note(matches!(written, Ok(Ok(()))));
        if let Ok(Err(e)) = &written {
            // The delivery id and the error kind only: no payload, no patient data.
            tracing::warn!(delivery = delivery.delivery_id, folder = %self.root.display(), error = %e.kind(), "folder sink could not write a delivery; it will be retried");
        }
        match written {
            Ok(Ok(())) => SinkOutcome::Sent {
                message_id: format!("FOLDER-{}", delivery.local_id),
            },
            Ok(Err(e)) => SinkOutcome::Retry {
                code: "IO".into(),
                reason: format!("folder sink write failed: {}", e.kind()),
                retry_after: None,
            },
            Err(_) => SinkOutcome::Retry {
                code: "IO".into(),
                reason: "folder sink task failed".into(),
                retry_after: None,
            },
        }
    }
}

/// Keeps path components to letters, digits, `-`, `_` and `.` (never `..`).
fn safe(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".into()
    } else {
        cleaned
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn control_file(d: &pb::Delivery, from: &str) -> String {
    format!(
        "<DTSControl>\n  <Version>1.0</Version>\n  <AddressType>DTS</AddressType>\n  <MessageType>Data</MessageType>\n  <From_DTS>{}</From_DTS>\n  <To_DTS>{}</To_DTS>\n  <Subject>NEMS {}</Subject>\n  <LocalId>{}</LocalId>\n  <WorkflowId>{}</WorkflowId>\n  <PartnerId>{}</PartnerId>\n  <ContentType>application/fhir+xml</ContentType>\n  <Encrypted>N</Encrypted>\n  <Compress>N</Compress>\n</DTSControl>\n",
        escape(from),
        escape(&d.mailbox),
        escape(&d.event_code),
        escape(&d.local_id),
        escape(&d.workflow_id),
        escape(&d.partner_id),
    )
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_payload_and_control_file() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FolderSink::new(dir.path(), "NEMSSVC01");
        let d = pb::Delivery {
            delivery_id: 1,
            attempt: 1,
            local_id: "abc-0".into(),
            event_code: "vaccinations-1".into(),
            mailbox: "MB01".into(),
            workflow_id: "VACCINATIONS_1".into(),
            partner_id: "s1|t&1".into(),
            payload: b"<Bundle xmlns=\"http://hl7.org/fhir\"/>".to_vec().into(),
            ..Default::default()
        };
        assert_eq!(
            sink.deliver(&d).await,
            SinkOutcome::Sent {
                message_id: "FOLDER-abc-0".into()
            }
        );
        let folder = dir.path().join("MB01/VACCINATIONS_1");
        assert_eq!(std::fs::read(folder.join("abc-0.dat")).unwrap(), d.payload);
        let ctl = std::fs::read_to_string(folder.join("abc-0.ctl")).unwrap();
        assert!(ctl.contains("<PartnerId>s1|t&amp;1</PartnerId>"), "{ctl}");
        assert!(ctl.contains("<WorkflowId>VACCINATIONS_1</WorkflowId>"));
        // No temporary files are left behind; writing again is idempotent.
        assert_eq!(
            sink.deliver(&d).await,
            SinkOutcome::Sent {
                message_id: "FOLDER-abc-0".into()
            }
        );
        let names: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn path_components_are_sanitised() {
        assert_eq!(safe("../etc"), ".._etc");
        assert_eq!(safe(".."), "_");
        assert_eq!(safe("A B/C"), "A_B_C");
    }
}
