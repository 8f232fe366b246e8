//! `nems admin …`: operator commands over core's operator API (the same calls work with
//! grpcurl). Output is one line per record, fields as `key=value`, timestamps in RFC 3339
//! (UTC) and states in the kebab case the filters take (`dead-lettered`); an empty result
//! prints `none`. Exit codes: 0 done, 1 failed (core unreachable or refused), 2 usage,
//! 3 not found.

use std::io::{IsTerminal, Write};

use clap::{Args, Subcommand};
use nems_proto::v1 as pb;
use pb::directory_service_client::DirectoryServiceClient;
use pb::operator_service_client::OperatorServiceClient;

use crate::remote::{NotFound, Remote, Usage};

/// `nems admin [--operator URL] COMMAND`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Core's operator API URL, `http://host:port` or `https://host:port` (default:
    /// operator_url / NEMS_OPERATOR_URL, else core.operator_listen on this host; https uses
    /// the operator_tls section).
    #[arg(long, global = true, value_name = "URL")]
    pub operator: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Admin,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Store and service status.
    Status,
    /// One accepted event and its deliveries (no payload, no patient data).
    Event {
        /// The event id (as `nems admin deliveries` shows it).
        id: String,
    },
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
    /// Queue dead letters again (all matching, or the ids given). Without ids or a filter
    /// it asks before queuing every dead letter (or give --yes).
    Redrive {
        /// Delivery ids.
        ids: Vec<u64>,
        /// Redrive every dead letter without asking when no id or filter is given.
        #[arg(long)]
        yes: bool,
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
    /// Resend a mailbox's delivered messages accepted since a time (each a new MESH message
    /// whose local id names the original), while `core.replay_retention` keeps their
    /// payloads. `--dry-run` says how many would go and sends nothing.
    Replay {
        /// The mailbox.
        #[arg(long)]
        mailbox: String,
        /// Deliveries of events accepted at or after this time (RFC 3339, for example
        /// 2026-12-01T09:00:00Z); within the replay window.
        #[arg(long)]
        since: String,
        /// Only this event type (for example PDS_CHANGE_OF_ADDRESS).
        #[arg(long)]
        event: Option<String>,
        /// Count only: queue nothing.
        #[arg(long)]
        dry_run: bool,
        /// Most deliveries to queue; more selected refuses the replay (default: the
        /// service's, 100000).
        #[arg(long)]
        limit: Option<u32>,
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
    /// The Spine directory: registered systems (ASIDs) and MESH mailboxes.
    #[command(subcommand)]
    Directory(Directory),
}

/// `nems admin directory …`.
#[derive(Debug, Subcommand)]
pub enum Directory {
    /// List every registered system.
    Systems,
    /// Show one system.
    System {
        /// The 12-digit ASID.
        asid: String,
    },
    /// Register a new system (refused when the ASID is registered: use change-system).
    AddSystem(SystemArgs),
    /// Change a registered system: the options given replace those fields, the rest stay.
    ChangeSystem(SystemArgs),
    /// Remove a system.
    RemoveSystem {
        /// The ASID.
        asid: String,
    },
    /// List every registered mailbox.
    Mailboxes,
    /// Register a mailbox, or change its ODS code or description.
    PutMailbox {
        /// The mailbox id, for example X26ABC1.
        id: String,
        /// ODS code of the organisation that owns it.
        #[arg(long)]
        ods: String,
        /// Free text for operators.
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove a mailbox.
    RemoveMailbox {
        /// The mailbox id.
        id: String,
    },
    /// Add or replace every system and mailbox entry of a directory file (the format of
    /// core.directory_file, see config/directory.sample.toml); entries not in the file stay.
    Apply {
        /// The directory file (TOML).
        file: std::path::PathBuf,
        /// Check the file and report what would change; change nothing.
        #[arg(long)]
        check: bool,
    },
}

/// The fields of a system entry, for add-system and change-system.
#[derive(Debug, Args)]
pub struct SystemArgs {
    /// The 12-digit ASID.
    pub asid: String,
    /// ODS codes linked to the ASID (repeat, or comma-separate).
    #[arg(long = "ods", value_delimiter = ',')]
    pub ods_codes: Option<Vec<String>>,
    /// Category bag values such as NEMS_SUBS_TYPE:EXPLICIT or NEMS_EVENT_ID:VACCINATIONS_1
    /// (repeat, or comma-separate; an empty value clears them).
    #[arg(long = "bag", value_delimiter = ',')]
    pub category_bags: Option<Vec<String>>,
    /// Publish message sets such as Vaccinations (repeat, or comma-separate).
    #[arg(long = "message-set", value_delimiter = ',')]
    pub publish_message_sets: Option<Vec<String>>,
    /// Whether it is the Spine/PDS publisher (the only one allowed pds-* events).
    #[arg(long, value_name = "true|false")]
    pub pds_publisher: Option<bool>,
    /// Identity its client certificate must carry (SAN), for mutual TLS.
    #[arg(long)]
    pub certificate_identity: Option<String>,
    /// Free text for operators.
    #[arg(long)]
    pub description: Option<String>,
}

impl SystemArgs {
    /// Applies the options given to `system`.
    fn apply_to(self, system: &mut pb::SpineSystem) {
        let list = |values: Vec<String>| -> Vec<String> {
            values.into_iter().filter(|v| !v.is_empty()).collect()
        };
        if let Some(v) = self.ods_codes {
            system.ods_codes = list(v);
        }
        if let Some(v) = self.category_bags {
            system.category_bags = list(v);
        }
        if let Some(v) = self.publish_message_sets {
            system.publish_message_sets = list(v);
        }
        if let Some(v) = self.pds_publisher {
            system.pds_publisher = v;
        }
        if let Some(v) = self.certificate_identity {
            system.certificate_identity = v;
        }
        if let Some(v) = self.description {
            system.description = v;
        }
    }
}

/// A protobuf enum value name in kebab case without its type prefix:
/// `DELIVERY_STATE_DEAD_LETTERED` with prefix `DELIVERY_STATE_` is `dead-lettered`.
fn kebab(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// How a delivery state is printed and given (`--state`).
pub fn delivery_state_name(state: pb::DeliveryState) -> String {
    kebab(state.as_str_name(), "DELIVERY_STATE_")
}

/// The delivery states, by the name `--state` takes.
const DELIVERY_STATES: [pb::DeliveryState; 5] = [
    pb::DeliveryState::Queued,
    pb::DeliveryState::InFlight,
    pb::DeliveryState::Delivered,
    pb::DeliveryState::DeadLettered,
    pb::DeliveryState::Suppressed,
];

/// Reads `--state` in any case, with `-` or `_` (`dead-lettered`, `DEAD_LETTERED`).
pub fn state_of(name: &str) -> anyhow::Result<pb::DeliveryState> {
    let wanted = name.trim().to_ascii_lowercase().replace('_', "-");
    DELIVERY_STATES
        .into_iter()
        .find(|s| delivery_state_name(*s) == wanted)
        .ok_or_else(|| {
            let names: Vec<String> = DELIVERY_STATES
                .into_iter()
                .map(delivery_state_name)
                .collect();
            Usage(format!(
                "--state `{name}` must be one of {}",
                names.join(", ")
            ))
            .into()
        })
}

/// A timestamp as printed: RFC 3339 in UTC, `-` when unset.
fn at(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// The line `nems admin deliveries` and `nems admin event` print for one delivery.
pub fn delivery_line(d: &pb::DeliveryRecord) -> String {
    format!(
        "id={} local_id={} event={} mailbox={} workflow={} state={} attempts={} accepted_at={} updated_at={} next_attempt_at={} mesh_id={} error={} {}",
        d.delivery_id,
        d.local_id,
        d.event_id,
        d.mailbox,
        d.workflow_id,
        delivery_state_name(d.state()),
        d.attempts,
        at(d.accepted_at.as_ref()),
        at(d.updated_at.as_ref()),
        at(d.next_attempt_at.as_ref()),
        or_dash(&d.mesh_message_id),
        or_dash(&d.last_error_code),
        d.last_error
    )
}

/// The line `nems admin event` prints for the event itself.
pub fn event_line(e: &pb::EventRecord) -> String {
    format!(
        "event={} code={} type={} publisher={} accepted_at={} payload_bytes={} payload_held={} matched_subscriptions={} deliveries={}",
        e.event_id,
        e.event_code,
        e.message_event_type,
        e.publisher_asid,
        at(e.accepted_at.as_ref()),
        e.payload_bytes,
        e.payload_held,
        e.matched_subscriptions,
        e.deliveries
    )
}

/// The line `nems admin directory systems` prints for one system.
pub fn system_line(s: &pb::SpineSystem) -> String {
    format!(
        "asid={} ods={} pds_publisher={} certificate_identity={} message_sets={} category_bags={} description={:?}",
        s.asid,
        s.ods_codes.join(","),
        s.pds_publisher,
        or_dash(&s.certificate_identity),
        or_dash(&s.publish_message_sets.join(",")),
        or_dash(&s.category_bags.join(",")),
        s.description
    )
}

/// The line `nems admin directory mailboxes` prints for one mailbox.
pub fn mailbox_line(m: &pb::MeshMailbox) -> String {
    format!(
        "mailbox={} ods={} description={:?}",
        m.mailbox_id, m.ods_code, m.description
    )
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() { "-" } else { value }
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

/// Where the command's lines go, and what it learnt.
struct Out<'a> {
    w: &'a mut dyn Write,
    lines: usize,
}

impl Out<'_> {
    fn line(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.w, "{line}")?;
        self.lines += 1;
        Ok(())
    }

    /// Ends a listing: `none` when it printed nothing, a note when core has more.
    fn end(&mut self, more: bool) -> anyhow::Result<()> {
        if self.lines == 0 {
            writeln!(self.w, "none")?;
        } else if more {
            writeln!(
                self.w,
                "(more: raise --limit or narrow the filters to see the rest)"
            )?;
        }
        Ok(())
    }
}

/// Runs an operator command against the plaintext operator API at `url`, printing to
/// stdout.
pub async fn run(command: Admin, url: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    run_to(command, &Remote::plain(url), &mut stdout).await
}

/// Runs an operator command against `remote`, writing its lines to `w`. A missing record
/// is an error that downcasts to [`NotFound`] (exit code 3).
pub async fn run_to(command: Admin, remote: &Remote, w: &mut dyn Write) -> anyhow::Result<()> {
    let channel = remote.channel()?;
    let mut client =
        OperatorServiceClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024);
    let mut out = Out { w, lines: 0 };
    let failed = |what: &str| {
        let what = what.to_owned();
        move |s: tonic::Status| remote.explain(&what, &s)
    };
    match command {
        Admin::Status => {
            let s = client
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(failed("status"))?
                .into_inner();
            out.line(&format!(
                "version={} schema={} subscriptions={} events_accepted={} deliveries_pending={} patients={} reference_generations={:?}",
                s.version,
                s.schema_version,
                s.subscriptions,
                s.events_accepted,
                s.deliveries_pending,
                s.patients,
                s.reference_generations
            ))?;
        }
        Admin::Event { id } => {
            let r = client
                .get_event(pb::GetEventRequest {
                    event_id: id.clone(),
                })
                .await
                .map_err(failed(&format!("event {id}")))?
                .into_inner();
            let Some(event) = r.event else {
                return Err(NotFound(format!("event {id}")).into());
            };
            out.line(&event_line(&event))?;
            for d in &r.deliveries {
                out.line(&delivery_line(d))?;
            }
            if r.deliveries.is_empty() {
                out.line("deliveries: none")?;
            }
        }
        Admin::Stats { mailbox } => {
            let r = client
                .get_mailbox_stats(pb::GetMailboxStatsRequest {
                    mailbox: mailbox.unwrap_or_default(),
                })
                .await
                .map_err(failed("stats"))?
                .into_inner();
            for m in r.mailboxes {
                out.line(&format!(
                    "mailbox={} queued={} in_flight={} delivered={} dead_lettered={} suppressed={}",
                    m.mailbox, m.queued, m.in_flight, m.delivered, m.dead_lettered, m.suppressed
                ))?;
            }
            out.end(false)?;
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
                    newest_first: false,
                })
                .await
                .map_err(failed("deliveries"))?
                .into_inner();
            for d in &r.deliveries {
                out.line(&delivery_line(d))?;
            }
            out.end(!r.next_page_token.is_empty())?;
        }
        Admin::Redrive {
            ids,
            yes,
            mailbox,
            event_code,
            error_code,
        } => {
            // A blank filter (an unset shell variable) is no filter: it must not skip the
            // question below.
            let given = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
            let (mailbox, event_code, error_code) =
                (given(mailbox), given(event_code), given(error_code));
            let unfiltered =
                ids.is_empty() && mailbox.is_none() && event_code.is_none() && error_code.is_none();
            if unfiltered && !yes {
                let stats = client
                    .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
                    .await
                    .map_err(failed("stats"))?
                    .into_inner();
                let dead: u64 = stats.mailboxes.iter().map(|m| m.dead_lettered).sum();
                if dead == 0 {
                    out.line("redriven=0 (no dead letters)")?;
                    return Ok(());
                }
                if !confirm(&format!(
                    "Queue all {dead} dead letters of every mailbox again? Type yes to go on: "
                ))? {
                    anyhow::bail!(
                        "redrive with no id or filter queues all {dead} dead letters again: give \
                         ids, --mailbox, --event-code or --error-code, or --yes"
                    );
                }
            }
            let r = client
                .redrive_deliveries(pb::RedriveDeliveriesRequest {
                    delivery_ids: ids,
                    mailbox: mailbox.unwrap_or_default(),
                    event_code: event_code.unwrap_or_default(),
                    error_code: error_code.unwrap_or_default(),
                    limit: 0,
                })
                .await
                .map_err(failed("redrive"))?
                .into_inner();
            out.line(&format!("redriven={} skipped={:?}", r.redriven, r.skipped))?;
        }
        Admin::Replay {
            mailbox,
            since,
            event,
            dry_run,
            limit,
        } => {
            let since: prost_types::Timestamp = since.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "--since `{since}` is not an RFC 3339 time; write e.g. 2026-12-01T09:00:00Z"
                )
            })?;
            let r = client
                .replay_deliveries(pb::ReplayDeliveriesRequest {
                    mailbox,
                    since: Some(since),
                    event_code: event.unwrap_or_default(),
                    dry_run,
                    limit: limit.unwrap_or(0),
                })
                .await
                .map_err(failed("replay"))?
                .into_inner();
            out.line(&format!(
                "{}={} without_payload={} window_start={}",
                if r.dry_run {
                    "would_replay"
                } else {
                    "replayed"
                },
                r.replayed,
                r.without_payload,
                at(r.window_start.as_ref())
            ))?;
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
                .map_err(failed("subscriptions"))?
                .into_inner();
            for s in &r.subscriptions {
                let criteria = s
                    .resource
                    .as_ref()
                    .map(|r| r.criteria.clone())
                    .unwrap_or_default();
                out.line(&format!(
                    "id={} owner={} mailbox={} state={} created_at={} criteria={criteria}",
                    s.id,
                    s.owner_ods_code,
                    s.mailbox,
                    kebab(s.state().as_str_name(), "SUBSCRIPTION_STATE_"),
                    at(s.created_at.as_ref()),
                ))?;
            }
            out.end(!r.next_page_token.is_empty())?;
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
                .map_err(failed("audit"))?
                .into_inner();
            for a in &r.records {
                out.line(&audit_line(a))?;
            }
            out.end(!r.next_page_token.is_empty())?;
        }
        Admin::Lookup { postcode, practice } => {
            use pb::lookup_area_request::Key;
            let (key, what) = match (postcode, practice) {
                (Some(p), _) => (Key::Postcode(p), "postcode"),
                (_, Some(p)) => (Key::Practice(p), "practice"),
                _ => return Err(Usage("give --postcode or --practice".into()).into()),
            };
            let r = client
                .lookup_area(pb::LookupAreaRequest { key: Some(key) })
                .await
                .map_err(failed("lookup"))?
                .into_inner();
            if r.postcode.is_none() && r.practice.is_none() {
                return Err(
                    NotFound(format!("no such {what} in the reference data in force")).into(),
                );
            }
            for line in lookup_lines(&r) {
                out.line(&line)?;
            }
        }
        Admin::EventTypes => {
            let r = client
                .list_event_types(pb::ListEventTypesRequest {})
                .await
                .map_err(failed("event types"))?
                .into_inner();
            for t in r.event_types {
                out.line(&format!(
                    "code={} workflow={} state={} publish={} pds_only={}",
                    t.code,
                    t.workflow_id,
                    kebab(t.state().as_str_name(), "EVENT_TYPE_STATE_"),
                    t.publish_interaction_code,
                    t.pds_only
                ))?;
            }
            out.end(false)?;
        }
        Admin::Directory(command) => {
            let mut directory = DirectoryServiceClient::new(channel);
            directory_command(command, remote, &mut directory, &mut out).await?;
        }
    }
    Ok(())
}

/// Asks on the terminal; `false` without one (a script must say --yes).
fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{question}")?;
    stderr.flush()?;
    let mut answer = String::new();
    stdin.read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

async fn directory_command(
    command: Directory,
    remote: &Remote,
    client: &mut DirectoryServiceClient<tonic::transport::Channel>,
    out: &mut Out<'_>,
) -> anyhow::Result<()> {
    let failed = |what: String| move |s: tonic::Status| remote.explain(&what, &s);
    match command {
        Directory::Systems => {
            let r = client
                .list_systems(pb::ListSystemsRequest {})
                .await
                .map_err(failed("list systems".into()))?
                .into_inner();
            for s in &r.systems {
                out.line(&system_line(s))?;
            }
            out.end(false)?;
        }
        Directory::System { asid } => {
            let system = get_system(client, remote, &asid)
                .await?
                .ok_or_else(|| NotFound(format!("system {asid}")))?;
            out.line(&system_line(&system))?;
        }
        Directory::AddSystem(args) => {
            let asid = args.asid.clone();
            if get_system(client, remote, &asid).await?.is_some() {
                anyhow::bail!("system {asid} is registered already: use change-system");
            }
            let mut system = pb::SpineSystem {
                asid: asid.clone(),
                ..Default::default()
            };
            args.apply_to(&mut system);
            let r = client
                .put_system(pb::PutSystemRequest {
                    system: Some(system),
                })
                .await
                .map_err(failed(format!("adding system {asid}")))?
                .into_inner();
            let stored = get_system(client, remote, &asid).await?.unwrap_or_default();
            if r.replaced {
                anyhow::bail!(
                    "system {asid} was added by someone else meanwhile and is now replaced by \
                     this one: {}",
                    system_line(&stored)
                );
            }
            out.line(&format!("added {}", system_line(&stored)))?;
        }
        Directory::ChangeSystem(args) => {
            let asid = args.asid.clone();
            let mut system = get_system(client, remote, &asid)
                .await?
                .ok_or_else(|| NotFound(format!("system {asid} (use add-system)")))?;
            args.apply_to(&mut system);
            client
                .put_system(pb::PutSystemRequest {
                    system: Some(system),
                })
                .await
                .map_err(failed(format!("changing system {asid}")))?;
            let stored = get_system(client, remote, &asid).await?.unwrap_or_default();
            out.line(&format!("changed {}", system_line(&stored)))?;
        }
        Directory::RemoveSystem { asid } => {
            let r = client
                .delete_system(pb::DeleteSystemRequest { asid: asid.clone() })
                .await
                .map_err(failed(format!("removing system {asid}")))?
                .into_inner();
            if !r.deleted {
                return Err(NotFound(format!("system {asid}")).into());
            }
            out.line(&format!("removed system {asid}"))?;
        }
        Directory::Mailboxes => {
            let r = client
                .list_mailboxes(pb::ListMailboxesRequest {})
                .await
                .map_err(failed("list mailboxes".into()))?
                .into_inner();
            for m in &r.mailboxes {
                out.line(&mailbox_line(m))?;
            }
            out.end(false)?;
        }
        Directory::PutMailbox {
            id,
            ods,
            description,
        } => {
            // As core stores them (upper case).
            let mailbox = pb::MeshMailbox {
                mailbox_id: id.to_ascii_uppercase(),
                ods_code: ods.to_ascii_uppercase(),
                description: description.unwrap_or_default(),
            };
            let r = client
                .put_mailbox(pb::PutMailboxRequest {
                    mailbox: Some(mailbox.clone()),
                })
                .await
                .map_err(failed(format!("putting mailbox {id}")))?
                .into_inner();
            let verb = if r.replaced { "changed" } else { "added" };
            out.line(&format!("{verb} {}", mailbox_line(&mailbox)))?;
        }
        Directory::RemoveMailbox { id } => {
            let r = client
                .delete_mailbox(pb::DeleteMailboxRequest {
                    mailbox_id: id.clone(),
                })
                .await
                .map_err(failed(format!("removing mailbox {id}")))?
                .into_inner();
            if !r.deleted {
                return Err(NotFound(format!("mailbox {id}")).into());
            }
            out.line(&format!("removed mailbox {id}"))?;
        }
        Directory::Apply { file, check } => {
            let file =
                nems_core::directory::DirectoryFile::load(&file).map_err(anyhow::Error::msg)?;
            let systems = client
                .list_systems(pb::ListSystemsRequest {})
                .await
                .map_err(failed("list systems".into()))?
                .into_inner()
                .systems;
            let mailboxes = client
                .list_mailboxes(pb::ListMailboxesRequest {})
                .await
                .map_err(failed("list mailboxes".into()))?
                .into_inner()
                .mailboxes;
            let mut tally = [0u32; 3];
            for entry in &file.system {
                let system = entry.to_pb();
                let change = Applied::of(systems.iter().find(|s| s.asid == system.asid), &system);
                tally[change as usize] += 1;
                if change != Applied::Same && !check {
                    client
                        .put_system(pb::PutSystemRequest {
                            system: Some(system.clone()),
                        })
                        .await
                        .map_err(failed(format!("putting system {}", system.asid)))?;
                }
                out.line(&format!("{} system {}", change.verb(), system.asid))?;
            }
            for entry in &file.mailbox {
                let mailbox = entry.to_pb();
                let current = mailboxes
                    .iter()
                    .find(|m| m.mailbox_id == mailbox.mailbox_id);
                let change = Applied::of(current, &mailbox);
                tally[change as usize] += 1;
                if change != Applied::Same && !check {
                    client
                        .put_mailbox(pb::PutMailboxRequest {
                            mailbox: Some(mailbox.clone()),
                        })
                        .await
                        .map_err(failed(format!("putting mailbox {}", mailbox.mailbox_id)))?;
                }
                out.line(&format!("{} mailbox {}", change.verb(), mailbox.mailbox_id))?;
            }
            let [added, changed, same] = tally;
            out.line(&format!(
                "{added} added, {changed} changed, {same} unchanged{}",
                if check {
                    " (check only: nothing changed)"
                } else {
                    ""
                }
            ))?;
        }
    }
    Ok(())
}

/// What applying a directory file entry does to the entry in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Add = 0,
    Change = 1,
    Same = 2,
}

impl Applied {
    fn of<T: PartialEq>(current: Option<&T>, new: &T) -> Applied {
        match current {
            None => Applied::Add,
            Some(c) if c == new => Applied::Same,
            Some(_) => Applied::Change,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Applied::Add => "add",
            Applied::Change => "change",
            Applied::Same => "same",
        }
    }
}

/// One system, `None` when the ASID is not registered.
async fn get_system(
    client: &mut DirectoryServiceClient<tonic::transport::Channel>,
    remote: &Remote,
    asid: &str,
) -> anyhow::Result<Option<pb::SpineSystem>> {
    match client
        .get_system(pb::GetSystemRequest {
            asid: asid.to_owned(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().system),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(remote.explain(&format!("system {asid}"), &s)),
    }
}
