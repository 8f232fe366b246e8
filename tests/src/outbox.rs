//! Reading the folder sink: every delivered `.dat` with its `.ctl` control file.

use std::path::Path;

/// One delivery found in the folder sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderDelivery {
    /// Recipient mailbox (folder).
    pub mailbox: String,
    /// Workflow id (folder).
    pub workflow_id: String,
    /// `LocalId` from the control file.
    pub local_id: String,
    /// `PartnerId` from the control file.
    pub partner_id: String,
    /// The payload.
    pub payload: Vec<u8>,
}

fn tag(ctl: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    ctl.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map(|(v, _)| {
            v.replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
        })
        .unwrap_or_default()
}

/// Every complete delivery (a `.ctl` with its `.dat`) under `root`, sorted by mailbox and
/// local id.
pub fn read(root: &Path) -> Vec<FolderDelivery> {
    let mut out = Vec::new();
    let Ok(mailboxes) = std::fs::read_dir(root) else {
        return out;
    };
    for mailbox in mailboxes.flatten() {
        let Ok(workflows) = std::fs::read_dir(mailbox.path()) else {
            continue;
        };
        for workflow in workflows.flatten() {
            let Ok(files) = std::fs::read_dir(workflow.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().and_then(|e| e.to_str()) != Some("ctl") {
                    continue;
                }
                let ctl = std::fs::read_to_string(&path).unwrap_or_default();
                let payload = std::fs::read(path.with_extension("dat")).unwrap_or_default();
                out.push(FolderDelivery {
                    mailbox: mailbox.file_name().to_string_lossy().into_owned(),
                    workflow_id: workflow.file_name().to_string_lossy().into_owned(),
                    local_id: tag(&ctl, "LocalId"),
                    partner_id: tag(&ctl, "PartnerId"),
                    payload,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.mailbox, &a.local_id).cmp(&(&b.mailbox, &b.local_id)));
    out
}
