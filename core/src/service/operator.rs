//! `OperatorService`: listings, the ledger, dead-letter redrive, reference data and
//! demographics imports, area lookups, the audit trail and status.

use std::sync::Arc;

use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;
use nems_proto::v1::operator_service_server::OperatorService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::Fault;
use crate::accept;
use crate::backend::keys::{id_hex, new_id, nhs_key, now_ms, parse_id, timestamp};
use crate::backend::{
    self, AuditFilter, Guard, ListFilter, NewDelivery, NewEvent, Query, RefdataFinish,
    ReplaySelection, Selection, StoredSubscription, rule_key,
};
use crate::domain::Rejection;
use crate::domain::datetime;
use crate::domain::patient::DemographicUpdate;
use crate::refdata::normalise_postcode;
use crate::service::subscriptions::current_resource;
use crate::state::CoreState;

/// The operator service.
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    pub(crate) state: Arc<CoreState>,
}

/// Most deliveries one replay queues unless the request sets its own limit: a replay is
/// one transaction, and a larger one should be split by time or event type.
const DEFAULT_REPLAY_LIMIT: usize = 100_000;

fn page_size(requested: u32) -> usize {
    match requested {
        0 => 100,
        n => n.min(1000) as usize,
    }
}

fn invalid(text: impl Into<String>) -> Status {
    Fault::invalid(text).into()
}

fn ms_of(t: Option<prost_types::Timestamp>) -> u64 {
    t.map(|t| (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000)
        .unwrap_or(0)
}

fn operator_audit(who: String, action: &str, resource_type: &str, id: &str) -> pb::AuditRecord {
    pb::AuditRecord {
        action: action.into(),
        resource_type: resource_type.into(),
        resource_id: id.into(),
        outcome: "ok".into(),
        count: 0,
        user: who,
        ..Default::default()
    }
}

impl Operator {
    fn record(sub: StoredSubscription, id: u128, now: u64) -> pb::SubscriptionRecord {
        let state = if sub.deleted_ms != 0 {
            pb::SubscriptionState::Deleted
        } else if sub.end_ms != 0 && sub.end_ms <= now {
            pb::SubscriptionState::Off
        } else {
            pb::SubscriptionState::Active
        };
        pb::SubscriptionRecord {
            id: id_hex(id),
            resource: Some(current_resource(id, &sub, now)),
            criteria: sub.criteria,
            owner_asid: sub.owner_asid,
            owner_ods_code: sub.owner_ods,
            mailbox: sub.mailbox,
            created_at: Some(timestamp(sub.created_ms)),
            state: state.into(),
        }
    }

    async fn import_rows(
        &self,
        who: String,
        set: usize,
        header: pb::ImportHeader,
        mut stream: Streaming<pb::ImportReferenceDataRequest>,
    ) -> Result<pb::ImportReferenceDataResponse, Status> {
        use pb::import_reference_data_request::Item;
        let limits = self.state.config.import;
        let percent = |given: Option<f64>, default: f64, name: &str| match given {
            None => Ok(default),
            Some(p) if (0.0..=100.0).contains(&p) => Ok(p),
            Some(_) => Err(invalid(format!("header.{name} must be between 0 and 100"))),
        };
        let mut guard = Guard {
            check: header.check,
            force: header.force,
            max_shrink_percent: percent(
                header.max_shrink_percent,
                limits.max_shrink_percent,
                "max_shrink_percent",
            )?,
            max_bad_row_percent: percent(
                header.max_bad_row_percent,
                limits.max_bad_row_percent,
                "max_bad_row_percent",
            )?,
            received: 0,
            bad: 0,
        };
        let store = &self.state.store;
        let slot = store
            .refdata_begin(set)
            .await
            .map_err(|e| Fault::store(e, "import"))?;
        while let Some(message) = stream.next().await {
            let item = message?.item.ok_or_else(|| Fault::missing("item"))?;
            let (received, encoded) = match (set, item) {
                (_, Item::End(end)) => {
                    guard.bad = end.bad_rows;
                    continue;
                }
                (0, Item::Postcodes(b)) => (b.rows.len(), backend::encode_postcodes(b.rows)),
                (1, Item::Practices(b)) => (b.rows.len(), backend::encode_practices(b.rows)),
                (2, Item::CodeMap(b)) => (b.rows.len(), backend::encode_code_map(b.rows)),
                _ => {
                    return Err(invalid(
                        "a batch does not match the data set named in the header",
                    ));
                }
            };
            guard.received += received as u64;
            store
                .refdata_insert(set, slot, encoded)
                .await
                .map_err(|e| Fault::store(e, "import"))?;
        }
        // A dry run compares keys with the set in force before the filled slot is emptied.
        let (added, removed, changed) = if guard.check {
            store
                .refdata_diff(set, slot)
                .await
                .map_err(|e| Fault::store(e, "import"))?
        } else {
            (0, 0, 0)
        };
        let record = operator_audit(who, "import.reference-data", &header.format, &header.source);
        let finish = RefdataFinish {
            set,
            slot,
            format: header.format,
            source: header.source,
            guard,
        };
        let finished = store
            .refdata_finish(finish, record)
            .await
            .map_err(|e| Fault::store(e, "import"))?;
        let name = backend::set_name(set);
        if guard.check {
            tracing::info!(
                set = name,
                rows = finished.rows,
                previous_rows = finished.previous_rows,
                bad_rows = guard.bad,
                "reference data checked, set in force kept"
            );
        } else if !finished.applied {
            tracing::warn!(
                set = name,
                rows = finished.rows,
                previous_rows = finished.previous_rows,
                bad_rows = guard.bad,
                generation = finished.meta.generation,
                "reference data import refused, set in force kept"
            );
            return Err(Fault::ImportRefused(format!(
                "import refused, the {name} set in force (generation {}, {} rows) is kept: {} (force the import to replace it anyway)",
                finished.meta.generation,
                finished.previous_rows,
                finished.refusals.join("; ")
            ))
            .into());
        } else {
            tracing::info!(
                set = name,
                rows = finished.rows,
                previous_rows = finished.previous_rows,
                bad_rows = guard.bad,
                generation = finished.meta.generation,
                forced = !finished.refusals.is_empty(),
                "reference data replaced"
            );
        }
        Ok(pb::ImportReferenceDataResponse {
            rows: finished.rows,
            generation: finished.meta.generation,
            applied: finished.applied,
            previous_rows: finished.previous_rows,
            bad_rows: guard.bad,
            refusals: finished.refusals,
            added,
            removed,
            changed,
        })
    }
}

/// Builds the demographics update of an imported record; `None` for a bad NHS number.
fn import_update(r: &pb::PatientRecord) -> Option<DemographicUpdate> {
    let nhs = nhs_key(&r.nhs_number).filter(|_| crate::domain::nhs::is_valid(&r.nhs_number))?;
    let at_ms = datetime::parse_instant(&r.last_updated).map_or(0, datetime::to_ms);
    let norm = |p: &str| {
        if p.is_empty() {
            String::new()
        } else {
            normalise_postcode(p).unwrap_or_else(|| p.to_ascii_uppercase())
        }
    };
    Some(DemographicUpdate {
        nhs,
        at_ms,
        postcode: Some((norm(&r.postcode), norm(&r.previous_postcode))),
        gp_practice: Some(r.gp_practice.to_ascii_uppercase()),
        flag: Some(r.flag()),
        date_of_death: Some(r.date_of_death.clone()),
        birth_date: Some(r.birth_date.clone()),
    })
}

#[tonic::async_trait]
impl OperatorService for Operator {
    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        use pb::list_subscriptions_request::Filter;
        let req = request.into_inner();
        let filter = match req.filter {
            Some(Filter::SubscriptionId(id)) => {
                let found = match parse_id(&id.to_ascii_lowercase()) {
                    Some(id) => self
                        .state
                        .store
                        .subscription(id)
                        .await
                        .map_err(|e| Fault::store(e, "list-subscriptions"))?
                        .map(|s| (id, s)),
                    None => None,
                };
                let now = now_ms();
                return Ok(Response::new(pb::ListSubscriptionsResponse {
                    subscriptions: found
                        .into_iter()
                        .map(|(id, s)| Self::record(s, id, now))
                        .collect(),
                    next_page_token: String::new(),
                }));
            }
            None => ListFilter::All,
            Some(Filter::OdsCode(c)) => ListFilter::Owner(c.to_ascii_uppercase()),
            Some(Filter::Mailbox(m)) => ListFilter::Mailbox(m.to_ascii_uppercase()),
            Some(Filter::NhsNumber(n)) => ListFilter::Nhs(nhs_key(&n).ok_or_else(|| {
                Fault::from(Rejection::new(
                    SpineCode::InvalidNhsNumber,
                    "nhs_number must be 10 digits",
                ))
            })?),
            Some(Filter::Rule(r)) => {
                let rule = r.rule_type();
                if rule == pb::RuleType::Unspecified {
                    return Err(invalid("rule.rule_type is required"));
                }
                let full = rule_key(rule, &r.organisation_code, "");
                // Without a code, list every code of the rule.
                let prefix = if r.organisation_code.is_empty() {
                    full.trim_end_matches('/').to_string() + "/"
                } else {
                    full
                };
                ListFilter::Rule(prefix.replace("//", "/"))
            }
        };
        let size = page_size(req.page_size);
        let (token, include_deleted) = (req.page_token, req.include_deleted);
        let (page, next) = self
            .state
            .store
            .list_subscriptions(filter, token, size, include_deleted)
            .await
            .map_err(|e| Fault::store(e, "list-subscriptions"))?;
        let now = now_ms();
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: page
                .into_iter()
                .map(|(id, s)| Self::record(s, id, now))
                .collect(),
            next_page_token: next,
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let req = request.into_inner();
        let state =
            pb::DeliveryState::try_from(req.state).unwrap_or(pb::DeliveryState::Unspecified);
        let query = Query {
            event_id: req.event_id.to_ascii_lowercase(),
            mailbox: req.mailbox.to_ascii_uppercase(),
            state: (state != pb::DeliveryState::Unspecified).then_some(state),
            event_code: req.event_code,
            error_code: req.error_code,
            newest_first: req.newest_first,
        };
        let size = page_size(req.page_size);
        let token = req.page_token;
        let (deliveries, next) = self
            .state
            .store
            .list_deliveries(query, token, size)
            .await
            .map_err(|e| Fault::store(e, "list-deliveries"))?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries,
            next_page_token: next,
        }))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        let event_id = request.into_inner().event_id;
        let Some(id) = parse_id(&event_id) else {
            return Err(Fault::not_found("no event with that id").into());
        };
        let found = self
            .state
            .store
            .event(id)
            .await
            .map_err(|e| Fault::store(e, "get-event"))?;
        let (event, deliveries) = found.ok_or_else(|| Fault::not_found("no event with that id"))?;
        Ok(Response::new(pb::GetEventResponse {
            event: Some(event),
            deliveries,
        }))
    }

    async fn redrive_deliveries(
        &self,
        request: Request<pb::RedriveDeliveriesRequest>,
    ) -> Result<Response<pb::RedriveDeliveriesResponse>, Status> {
        let who = super::operator_identity(&request);
        let req = request.into_inner();
        let selection = Selection {
            ids: req.delivery_ids,
            mailbox: req.mailbox.to_ascii_uppercase(),
            event_code: req.event_code,
            error_code: req.error_code,
            limit: req.limit as usize,
        };
        let now = now_ms();
        let record = operator_audit(who, "redrive", "Delivery", "");
        let (redriven, skipped) = self
            .state
            .store
            .redrive(selection, now, record)
            .await
            .map_err(|e| Fault::store(e, "redrive"))?;
        self.state.note_queued(redriven.len() as u64);
        for (_, mailbox) in &redriven {
            self.state.dispatcher.available(mailbox, now);
        }
        tracing::info!(
            redriven = redriven.len(),
            skipped = skipped.len(),
            "dead letters redriven"
        );
        Ok(Response::new(pb::RedriveDeliveriesResponse {
            redriven: redriven.len() as u32,
            skipped,
        }))
    }

    async fn replay_deliveries(
        &self,
        request: Request<pb::ReplayDeliveriesRequest>,
    ) -> Result<Response<pb::ReplayDeliveriesResponse>, Status> {
        let who = super::operator_identity(&request);
        let req = request.into_inner();
        let now = now_ms();
        let window = self.state.config.replay_retention;
        if window.is_zero() {
            return Err(Status::failed_precondition(
                "replay is off: delivered messages keep no payload; set core.replay_retention \
                 (for example \"7days\") to keep them for replay from then on",
            ));
        }
        let mailbox = req.mailbox.trim().to_ascii_uppercase();
        if mailbox.is_empty() {
            return Err(invalid("a replay names its mailbox"));
        }
        let since = req
            .since
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .ok_or_else(|| invalid("a replay needs `since`, a time at or after 1970"))?;
        let since_ms = since.as_millis() as u64;
        let window_start = now.saturating_sub(window.as_millis() as u64);
        if since_ms < window_start {
            return Err(Status::failed_precondition(format!(
                "since is before the replay window: delivered messages keep their payload for \
                 {} (core.replay_retention), so the earliest since now is {}",
                nems_runtime::config::duration::format(window),
                datetime::format_instant_ms(window_start),
            )));
        }
        let selection = ReplaySelection {
            mailbox: mailbox.clone(),
            since_ms,
            event_code: req.event_code.trim().to_string(),
            limit: if req.limit == 0 {
                DEFAULT_REPLAY_LIMIT
            } else {
                req.limit as usize
            },
        };
        let record = operator_audit(who, "replay", "Delivery", &mailbox);
        let out = self
            .state
            .store
            .replay(selection, req.dry_run, now, record)
            .await
            .map_err(|e| Fault::store(e, "replay"))?;
        let replayed = out.replayed.len() as u64;
        if !req.dry_run && replayed > 0 {
            self.state.note_queued(replayed);
            self.state.dispatcher.available(&mailbox, now);
            crate::metrics::metrics()
                .deliveries_replayed
                .inc_by(replayed);
        }
        tracing::info!(
            replayed,
            without_payload = out.without_payload,
            dry_run = req.dry_run,
            "delivered messages replayed"
        );
        Ok(Response::new(pb::ReplayDeliveriesResponse {
            replayed: replayed as u32,
            without_payload: out.without_payload as u32,
            dry_run: req.dry_run,
            window_start: Some(timestamp(window_start)),
        }))
    }

    async fn get_mailbox_stats(
        &self,
        request: Request<pb::GetMailboxStatsRequest>,
    ) -> Result<Response<pb::GetMailboxStatsResponse>, Status> {
        let mailbox = request.into_inner().mailbox.to_ascii_uppercase();
        let mailboxes = self
            .state
            .store
            .mailbox_stats(mailbox)
            .await
            .map_err(|e| Fault::store(e, "mailbox-stats"))?;
        Ok(Response::new(pb::GetMailboxStatsResponse { mailboxes }))
    }

    async fn list_event_types(
        &self,
        _request: Request<pb::ListEventTypesRequest>,
    ) -> Result<Response<pb::ListEventTypesResponse>, Status> {
        Ok(Response::new(pb::ListEventTypesResponse {
            event_types: self.state.catalogue.all().cloned().collect(),
        }))
    }

    async fn inject_delivery(
        &self,
        request: Request<pb::InjectDeliveryRequest>,
    ) -> Result<Response<pb::InjectDeliveryResponse>, Status> {
        let who = super::operator_identity(&request);
        let req = request.into_inner();
        let mailbox = req.mailbox.to_ascii_uppercase();
        if self.state.directory().mailbox(&mailbox).is_none() {
            return Err(invalid("mailbox is not a registered MESH mailbox"));
        }
        let event_type = self
            .state
            .catalogue
            .get(&req.event_code)
            .ok_or_else(|| {
                Fault::from(Rejection::new(
                    SpineCode::InvalidCodeValue,
                    "event_code is not in the catalogue",
                ))
            })?
            .clone();
        if req.payload.is_empty() {
            return Err(Fault::missing("payload").into());
        }
        let event_id = new_id();
        let event = NewEvent {
            event_id,
            event_code: event_type.code.clone(),
            message_event_type: "new".into(),
            publisher_asid: "operator".into(),
            workflow_id: event_type.workflow_id.clone(),
            payload: req.payload,
            deliveries: Vec::new(),
            matched_subscriptions: 0,
            accepted_ms: now_ms(),
        };
        let acceptance = accept::Acceptance {
            event,
            recipients: accept::Recipients::Given(vec![NewDelivery {
                mailbox,
                partner_id: req.partner_id,
                subscription_ids: Vec::new(),
                suppressed: false,
            }]),
            audit: operator_audit(who, "inject-delivery", "Delivery", &id_hex(event_id)),
            when_busy: accept::WhenBusy::Wait,
        };
        let accepted = accept::accept(&self.state, acceptance)
            .await
            .map_err(|e| Fault::store(e, "inject"))?
            .written;
        Ok(Response::new(pb::InjectDeliveryResponse {
            event_id: id_hex(event_id),
            delivery_id: accepted.delivery_ids.first().copied().unwrap_or(0),
        }))
    }

    async fn import_reference_data(
        &self,
        request: Request<Streaming<pb::ImportReferenceDataRequest>>,
    ) -> Result<Response<pb::ImportReferenceDataResponse>, Status> {
        let who = super::operator_identity(&request);
        use pb::import_reference_data_request::Item;
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Fault::missing("header"))??;
        let Some(Item::Header(header)) = first.item else {
            return Err(invalid("the first message of an import must be its header"));
        };
        let set = backend::set_index(header.data_set())
            .ok_or_else(|| invalid("header.data_set is required"))?;
        let _exclusive = self.state.import_lock(set).lock().await;
        self.import_rows(who, set, header, stream)
            .await
            .map(Response::new)
    }

    async fn import_demographics(
        &self,
        request: Request<Streaming<pb::ImportDemographicsRequest>>,
    ) -> Result<Response<pb::ImportDemographicsResponse>, Status> {
        let who = super::operator_identity(&request);
        let mut stream = request.into_inner();
        let (mut written, mut skipped) = (0u64, 0u64);
        while let Some(message) = stream.next().await {
            let updates: Vec<DemographicUpdate> =
                message?.patients.iter().filter_map(import_update).collect();
            let n = updates.len() as u64;
            let w = self
                .state
                .store
                .apply_demographics(updates)
                .await
                .map_err(|e| Fault::store(e, "import-demographics"))?;
            let s = n - w;
            written += w;
            skipped += s;
        }
        let record = operator_audit(who, "import.demographics", "PatientRecord", "");
        self.state.audit_detached(record);
        tracing::info!(written, skipped, "demographics imported");
        Ok(Response::new(pb::ImportDemographicsResponse {
            written,
            skipped_older: skipped,
        }))
    }

    async fn lookup_area(
        &self,
        request: Request<pb::LookupAreaRequest>,
    ) -> Result<Response<pb::LookupAreaResponse>, Status> {
        let key = request
            .into_inner()
            .key
            .ok_or_else(|| Fault::missing("key"))?;
        let response = self
            .state
            .store
            .lookup_area(key)
            .await
            .map_err(|e| Fault::store(e, "lookup"))?;
        Ok(Response::new(response))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let req = request.into_inner();
        let filter = AuditFilter {
            since_ms: ms_of(req.since),
            until_ms: ms_of(req.until),
            asid: req.asid,
            action: req.action,
            resource_id: req.resource_id,
            newest_first: req.newest_first,
        };
        let size = page_size(req.page_size);
        let token = req.page_token;
        let (records, next) = self
            .state
            .store
            .list_audit(filter, token, size)
            .await
            .map_err(|e| Fault::store(e, "list-audit"))?;
        Ok(Response::new(pb::ListAuditResponse {
            records,
            next_page_token: next,
        }))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let totals = self
            .state
            .store
            .totals()
            .await
            .map_err(|e| Fault::store(e, "status"))?;
        Ok(Response::new(pb::GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            schema_version: totals.schema_version,
            subscriptions: totals.subscriptions,
            events_accepted: totals.events_accepted,
            deliveries_pending: totals.deliveries_pending,
            reference_generations: totals.reference.iter().map(|m| m.generation).collect(),
            reference_data: totals
                .reference
                .iter()
                .zip(backend::SET_NAMES)
                .map(|(m, name)| pb::ReferenceDataStatus {
                    name: name.to_string(),
                    generation: m.generation,
                    rows: m.rows,
                    format: m.format.clone(),
                    source: m.source.clone(),
                    imported_at: (m.imported_ms != 0).then(|| timestamp(m.imported_ms)),
                })
                .collect(),
            patients: totals.patients,
        }))
    }
}
