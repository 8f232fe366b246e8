//! `nems admin …`: operator commands over core's operator API (the same calls work with
//! grpcurl). Output is one line per record, fields as `key=value`.

use anyhow::Context;
use clap::Subcommand;
use nems_proto::v1 as pb;

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Store and service status.
    Status,
    /// Deliveries per mailbox and state.
    Stats {
        /// One mailbox only.
        #[arg(long)]
        mailbox: Option<String>,
    },
    /// Query the delivery ledger.
    Deliveries {
        /// Only this mailbox.
        #[arg(long)]
        mailbox: Option<String>,
        /// Only this state: queued, in-flight, delivered, dead-lettered, suppressed.
        #[arg(long)]
        state: Option<String>,
        /// Only this event id.
        #[arg(long)]
        event: Option<String>,
        /// Only this event type.
        #[arg(long)]
        event_code: Option<String>,
        /// Only deliveries whose last error code is this.
        #[arg(long)]
        error_code: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Queue dead letters again (all matching, or the ids given).
    Redrive {
        /// Delivery ids.
        ids: Vec<u64>,
        /// Only this mailbox.
        #[arg(long)]
        mailbox: Option<String>,
        /// Only this event type.
        #[arg(long)]
        event_code: Option<String>,
        /// Only this error code.
        #[arg(long)]
        error_code: Option<String>,
    },
    /// List subscriptions.
    Subscriptions {
        /// Contact organisation.
        #[arg(long)]
        ods: Option<String>,
        /// Mailbox.
        #[arg(long)]
        mailbox: Option<String>,
        /// NHS number (explicit subscriptions).
        #[arg(long)]
        nhs_number: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The audit trail.
    Audit {
        /// Only this ASID.
        #[arg(long)]
        asid: Option<String>,
        /// Only this action (publish, create, read, delete, ...).
        #[arg(long)]
        action: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Resolve a postcode or a practice with the reference data in force.
    Lookup {
        /// A postcode in any spacing.
        #[arg(long)]
        postcode: Option<String>,
        /// A practice code.
        #[arg(long)]
        practice: Option<String>,
    },
    /// The event catalogue in force.
    EventTypes,
}

fn state_of(name: &str) -> anyhow::Result<pb::DeliveryState> {
    Ok(match name {
        "queued" => pb::DeliveryState::Queued,
        "in-flight" => pb::DeliveryState::InFlight,
        "delivered" => pb::DeliveryState::Delivered,
        "dead-lettered" => pb::DeliveryState::DeadLettered,
        "suppressed" => pb::DeliveryState::Suppressed,
        other => anyhow::bail!(
            "--state `{other}` must be queued, in-flight, delivered, dead-lettered or suppressed"
        ),
    })
}

/// The line `nems admin audit` prints for one record: when (RFC 3339, UTC), who, what.
pub fn audit_line(a: &pb::AuditRecord) -> String {
    let at =
        a.at.as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
    format!(
        "at={at} request={} asid={} ods={} user={} action={} type={} id={} outcome={}",
        a.request_id,
        a.asid,
        a.ods_code,
        a.user,
        a.action,
        a.resource_type,
        a.resource_id,
        a.outcome
    )
}

/// The lines `nems admin lookup` prints for `r`: the row, with the sub-ICB location in
/// every form the code map knows (ODS and GSS), comma-separated.
pub fn lookup_lines(r: &pb::LookupAreaResponse) -> Vec<String> {
    let codes = |fallback: &[String]| {
        if r.sub_icb_codes.is_empty() {
            fallback.join(",")
        } else {
            r.sub_icb_codes.join(",")
        }
    };
    if let Some(p) = &r.postcode {
        vec![format!(
            "postcode={} sub_icb={} local_authority={} country={} terminated={}",
            p.postcode,
            codes(&p.sub_icb),
            p.local_authority.join(","),
            p.country,
            p.terminated
        )]
    } else if let Some(p) = &r.practice {
        let parent = if p.parent_sub_icb.is_empty() {
            Vec::new()
        } else {
            vec![p.parent_sub_icb.clone()]
        };
        vec![format!(
            "practice={} parent_sub_icb={} closed={}",
            p.code,
            codes(&parent),
            p.closed
        )]
    } else {
        vec!["not found".into()]
    }
}

#[allow(clippy::print_stdout, reason = "operator commands print their results")]
fn out(line: String) {
    println!("{line}");
}

/// Runs an operator command against `url`.
pub async fn run(command: Admin, url: &str) -> anyhow::Result<()> {
    run_with(command, url, None).await
}

/// [`run`] over TLS when `tls` is given.
pub async fn run_with(
    command: Admin,
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<()> {
    let mut client = crate::import::operator_client_with(url, tls)?;
    match command {
        Admin::Status => {
            let s = client
                .get_status(pb::GetStatusRequest {})
                .await
                .context("status")?
                .into_inner();
            out(format!(
                "version={} schema={} subscriptions={} events_accepted={} deliveries_pending={} patients={} reference_generations={:?}",
                s.version,
                s.schema_version,
                s.subscriptions,
                s.events_accepted,
                s.deliveries_pending,
                s.patients,
                s.reference_generations
            ));
        }
        Admin::Stats { mailbox } => {
            let r = client
                .get_mailbox_stats(pb::GetMailboxStatsRequest {
                    mailbox: mailbox.unwrap_or_default(),
                })
                .await
                .context("stats")?
                .into_inner();
            for m in r.mailboxes {
                out(format!(
                    "mailbox={} queued={} in_flight={} delivered={} dead_lettered={} suppressed={}",
                    m.mailbox, m.queued, m.in_flight, m.delivered, m.dead_lettered, m.suppressed
                ));
            }
        }
        Admin::Deliveries {
            mailbox,
            state,
            event,
            event_code,
            error_code,
            limit,
        } => {
            let state = state
                .as_deref()
                .map(state_of)
                .transpose()?
                .unwrap_or(pb::DeliveryState::Unspecified);
            let r = client
                .list_deliveries(pb::ListDeliveriesRequest {
                    event_id: event.unwrap_or_default(),
                    mailbox: mailbox.unwrap_or_default(),
                    state: state.into(),
                    event_code: event_code.unwrap_or_default(),
                    error_code: error_code.unwrap_or_default(),
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .context("deliveries")?
                .into_inner();
            for d in r.deliveries {
                out(format!(
                    "id={} local_id={} mailbox={} workflow={} state={:?} attempts={} mesh_id={} error={} {}",
                    d.delivery_id,
                    d.local_id,
                    d.mailbox,
                    d.workflow_id,
                    d.state(),
                    d.attempts,
                    d.mesh_message_id,
                    d.last_error_code,
                    d.last_error
                ));
            }
        }
        Admin::Redrive {
            ids,
            mailbox,
            event_code,
            error_code,
        } => {
            let r = client
                .redrive_deliveries(pb::RedriveDeliveriesRequest {
                    delivery_ids: ids,
                    mailbox: mailbox.unwrap_or_default(),
                    event_code: event_code.unwrap_or_default(),
                    error_code: error_code.unwrap_or_default(),
                    limit: 0,
                })
                .await
                .context("redrive")?
                .into_inner();
            out(format!("redriven={} skipped={:?}", r.redriven, r.skipped));
        }
        Admin::Subscriptions {
            ods,
            mailbox,
            nhs_number,
            limit,
        } => {
            use pb::list_subscriptions_request::Filter;
            let filter = match (ods, mailbox, nhs_number) {
                (Some(o), _, _) => Some(Filter::OdsCode(o)),
                (_, Some(m), _) => Some(Filter::Mailbox(m)),
                (_, _, Some(n)) => Some(Filter::NhsNumber(n)),
                _ => None,
            };
            let r = client
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    filter,
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .context("subscriptions")?
                .into_inner();
            for s in r.subscriptions {
                let criteria = s
                    .resource
                    .as_ref()
                    .map(|r| r.criteria.clone())
                    .unwrap_or_default();
                out(format!(
                    "id={} owner={} mailbox={} state={:?} criteria={criteria}",
                    s.id,
                    s.owner_ods_code,
                    s.mailbox,
                    s.state()
                ));
            }
        }
        Admin::Audit {
            asid,
            action,
            limit,
        } => {
            let r = client
                .list_audit(pb::ListAuditRequest {
                    asid: asid.unwrap_or_default(),
                    action: action.unwrap_or_default(),
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .context("audit")?
                .into_inner();
            for a in &r.records {
                out(audit_line(a));
            }
        }
        Admin::Lookup { postcode, practice } => {
            use pb::lookup_area_request::Key;
            let key = match (postcode, practice) {
                (Some(p), _) => Key::Postcode(p),
                (_, Some(p)) => Key::Practice(p),
                _ => anyhow::bail!("give --postcode or --practice"),
            };
            let r = client
                .lookup_area(pb::LookupAreaRequest { key: Some(key) })
                .await
                .context("lookup")?
                .into_inner();
            for line in lookup_lines(&r) {
                out(line);
            }
        }
        Admin::EventTypes => {
            let r = client
                .list_event_types(pb::ListEventTypesRequest {})
                .await
                .context("event types")?
                .into_inner();
            for t in r.event_types {
                out(format!(
                    "code={} workflow={} state={:?} publish={} pds_only={}",
                    t.code,
                    t.workflow_id,
                    t.state(),
                    t.publish_interaction_code,
                    t.pds_only
                ));
            }
        }
    }
    Ok(())
}
