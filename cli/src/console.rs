//! The operations console: server-rendered HTML pages at `/console/` on the ops listener,
//! read from and acted through core's operator API (`OperatorService`) as `nems admin`
//! is, so that it works the same on every storage engine and every change it makes is
//! audited by core with the caller core verified.
//!
//! Why this shape: the pages are askama templates compiled into the binary (escaped by
//! default, no template files or Node at run time), charts are inline SVG drawn here (no
//! chart library or script to vendor), and every action is a plain HTML form (no script
//! at all), so the console is a few kilobytes per page and works in any browser.
//!
//! Who may open it ([`Access`]): only clients on loopback; where the operator API needs no
//! operator credentials, anyone there, unless `ops.console_tokens_file` names the
//! operators, who then sign in with a bearer token (a login form setting an HttpOnly,
//! SameSite=Strict cookie, or `Authorization: Bearer`). Where operator TLS is on, the
//! token list is required (without it the console answers 403 to everyone: it never serves
//! anonymously what `nems admin` needs a certificate for), the console calls core with an
//! operator certificate of its own, and core audits each change with that certificate and
//! the console user it acts for. A form posted from another origin (a page in the
//! operator's browser posting to loopback) is refused.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use nems_proto::v1 as pb;
use nems_proto::v1::directory_service_client::DirectoryServiceClient;
use nems_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Rows per listing page.
const PAGE: u32 = 50;
/// Samples kept for the overview's charts (one a minute: the last hour).
const SAMPLES: usize = 60;
/// Largest form body read.
const MAX_FORM: usize = 16 << 10;

/// What the overview charts: the service's own totals, sampled once a minute.
#[derive(Debug, Default)]
struct Samples {
    /// (events accepted, deliveries delivered) at each sample, oldest first.
    points: VecDeque<(u64, u64)>,
}

/// Who may open the console.
#[derive(Debug, Clone)]
pub enum Access {
    /// Anyone on this host (the operator API needs no operator credentials).
    Loopback,
    /// The operators holding one of these bearer tokens.
    Tokens(Tokens),
    /// No one, for this reason.
    Refused(&'static str),
}

/// The console's operators: each one's name and the SHA-256 of its bearer token, read
/// from `ops.console_tokens_file` (lines `name sha256:<64 hex>`; `#` comments).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<Vec<(String, [u8; 32])>>);

impl Tokens {
    /// Reads a token file.
    pub fn read(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses a token file's text; the error names the line (never a token).
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", n + 1);
            let (name, hash) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("write `name sha256:<64 hex digits>`"))?;
            if !nems_runtime::ops::is_console_user_name(name) {
                return Err(bad("a name is 1 to 64 of A-Z a-z 0-9 . _ @ -"));
            }
            let hex = hash
                .trim()
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("the hash starts with sha256:"))?;
            let mut digest = [0u8; 32];
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the hash is 64 hex digits after sha256:"));
            }
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| bad("the hash is 64 hex digits after sha256:"))?;
            }
            if out.iter().any(|(other, _)| other == name) {
                return Err(bad("the name is given twice"));
            }
            out.push((name.to_owned(), digest));
        }
        if out.is_empty() {
            return Err("the file names no operator".into());
        }
        Ok(Tokens(Arc::new(out)))
    }

    /// The line of a token file for `name` holding `token` (`name sha256:<hex>`).
    pub fn line(name: &str, token: &str) -> String {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{name} sha256:{hex}")
    }

    /// The operator whose token this is.
    fn who(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        self.0
            .iter()
            .find(|(_, hash)| {
                // Compared in full whatever the first difference (no early exit).
                hash.iter()
                    .zip(digest.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            })
            .map(|(name, _)| name.as_str())
    }
}

/// Names, in [`nems_runtime::ops::CONSOLE_USER_METADATA`], the operator the console acts
/// for on each call to core.
#[derive(Debug, Clone, Default)]
pub struct ActingFor(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for ActingFor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(name) = &self.0 {
            request
                .metadata_mut()
                .insert(nems_runtime::ops::CONSOLE_USER_METADATA, name.clone());
        }
        Ok(request)
    }
}

type OperatorClient = OperatorServiceClient<InterceptedService<Channel, ActingFor>>;
type DirectoryClient = DirectoryServiceClient<InterceptedService<Channel, ActingFor>>;

/// The cookie the login form sets.
const COOKIE: &str = "nems_console";

/// The console of one process: its operator API clients, who may open it, and its chart
/// samples.
#[derive(Debug, Clone)]
pub struct Console {
    channel: Channel,
    client: OperatorClient,
    directory: DirectoryClient,
    access: Access,
    backlog_bound: u64,
    samples: Arc<Mutex<Samples>>,
}

impl Console {
    /// A console over the operator API at `channel` (with the console's operator
    /// certificate where operator TLS is on), open to `access`; `backlog_bound` is
    /// `core.max_pending_deliveries`.
    pub fn new(channel: Channel, access: Access, backlog_bound: u64) -> Console {
        Console {
            client: OperatorServiceClient::with_interceptor(channel.clone(), ActingFor::default()),
            directory: DirectoryServiceClient::with_interceptor(
                channel.clone(),
                ActingFor::default(),
            ),
            channel,
            access,
            backlog_bound,
            samples: Arc::default(),
        }
    }

    /// This console acting for `user` on its calls to core.
    fn acting_for(&self, user: &str) -> Console {
        let name = tonic::metadata::AsciiMetadataValue::try_from(user).ok();
        Console {
            client: OperatorServiceClient::with_interceptor(
                self.channel.clone(),
                ActingFor(name.clone()),
            ),
            directory: DirectoryServiceClient::with_interceptor(
                self.channel.clone(),
                ActingFor(name),
            ),
            ..self.clone()
        }
    }

    /// Samples the totals once a minute for the charts, until the process ends.
    pub fn start_sampling(&self) {
        let console = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Ok(point) = console.totals().await {
                    let mut samples = lock(&console.samples);
                    samples.points.push_back(point);
                    while samples.points.len() > SAMPLES + 1 {
                        samples.points.pop_front();
                    }
                }
            }
        });
    }

    async fn totals(&self) -> Result<(u64, u64), tonic::Status> {
        let mut client = self.client.clone();
        let status = client
            .get_status(pb::GetStatusRequest::default())
            .await?
            .into_inner();
        let stats = client
            .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
            .await?
            .into_inner();
        let delivered = stats.mailboxes.iter().map(|m| m.delivered).sum();
        Ok((status.events_accepted, delivered))
    }

    /// Answers one request under `/console`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if !peer.ip().is_loopback() {
            return refused(
                StatusCode::FORBIDDEN,
                "the console answers clients on this host only",
            );
        }
        if req.method() == Method::POST && !same_origin(&req) {
            return refused(
                StatusCode::FORBIDDEN,
                "a form posted from another site is refused",
            );
        }
        match &self.access {
            Access::Refused(why) => refused(StatusCode::FORBIDDEN, why),
            Access::Loopback => self.route(req, None).await,
            Access::Tokens(tokens) => {
                let path = req.uri().path().trim_end_matches('/');
                match (req.method().clone(), path) {
                    (Method::GET, "/console/login") => return login_page(StatusCode::OK, None),
                    (Method::POST, "/console/login") => return sign_in(req, tokens).await,
                    (Method::POST, "/console/logout") => return sign_out(),
                    _ => {}
                }
                let presented = presented_token(&req);
                let Some(user) = presented.as_deref().and_then(|t| tokens.who(t)) else {
                    let why = if presented.is_some() {
                        "That token is not valid (or has been withdrawn)."
                    } else {
                        "Sign in with your console token."
                    };
                    return login_page(StatusCode::UNAUTHORIZED, Some(why));
                };
                let user = user.to_owned();
                self.acting_for(&user).route(req, Some(&user)).await
            }
        }
    }

    /// Answers a request the console's access rules let through.
    async fn route(&self, req: Request<Incoming>, user: Option<&str>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let query = parse_form(req.uri().query().unwrap_or_default());
        let outcome = match (req.method().clone(), path.as_str()) {
            (Method::GET, "/console") => self.overview().await,
            (Method::GET, "/console/mailboxes") => self.mailboxes(&query).await,
            (Method::GET, "/console/dead-letters") => self.dead_letters(&query, None).await,
            (Method::GET, "/console/dead-letters/redrive-all") => self.confirm(&query).await,
            (Method::GET, "/console/audit") => self.audit(&query).await,
            (Method::GET, "/console/subscriptions") => self.subscriptions(&query, None).await,
            (Method::POST, "/console/subscriptions") => match read_form(req).await {
                Ok(form) => match value(&form, "nhs_number") {
                    Some(nhs) => {
                        let nhs = nhs.trim().to_owned();
                        self.subscriptions(&form, Some(nhs)).await
                    }
                    None => Err(Failure::Bad("the form names no NHS number".into())),
                },
                Err(e) => Err(e),
            },
            (Method::GET, p) if p.starts_with("/console/subscriptions/") => {
                let id = p.trim_start_matches("/console/subscriptions/").to_owned();
                self.subscription(&id).await
            }
            (Method::GET, "/console/directory") => self.directory().await,
            (Method::GET, "/console/reference-data") => self.reference_data().await,
            (Method::GET, "/console/replay") => self.replay_form(&query).await,
            (Method::POST, "/console/replay") => match read_form(req).await {
                Ok(form) => self.replay(&form).await,
                Err(e) => Err(e),
            },
            (Method::GET, p) if p.starts_with("/console/mailboxes/") => {
                let mailbox = p.trim_start_matches("/console/mailboxes/").to_owned();
                self.mailbox(&mailbox, &query).await
            }
            (Method::POST, "/console/dead-letters/redrive") => match read_form(req).await {
                Ok(form) => self.redrive_one(&form).await,
                Err(e) => Err(e),
            },
            (Method::POST, "/console/dead-letters/redrive-all") => match read_form(req).await {
                Ok(form) => self.redrive_all(&form).await,
                Err(e) => Err(e),
            },
            _ => Err(Failure::NotFound),
        };
        match outcome {
            Ok(html) => page(StatusCode::OK, with_user(html, user)),
            Err(Failure::NotFound) => refused(StatusCode::NOT_FOUND, "no such console page"),
            Err(Failure::Bad(text)) => refused(StatusCode::BAD_REQUEST, &text),
            Err(Failure::Core(status))
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ) =>
            {
                refused(StatusCode::BAD_REQUEST, status.message())
            }
            Err(Failure::Core(status)) => refused(
                StatusCode::BAD_GATEWAY,
                &format!("core's operator API answered: {}", status.message()),
            ),
        }
    }

    async fn overview(&self) -> Result<String, Failure> {
        // The two reads at once: the page takes the slower one's time, not their sum.
        let (mut a, mut b) = (self.client.clone(), self.client.clone());
        let (status, stats) = tokio::join!(
            a.get_status(pb::GetStatusRequest::default()),
            b.get_mailbox_stats(pb::GetMailboxStatsRequest::default())
        );
        let (status, stats) = (status?.into_inner(), stats?.into_inner());
        let delivered: u64 = stats.mailboxes.iter().map(|m| m.delivered).sum();
        let dead_letters = stats.mailboxes.iter().map(|m| m.dead_lettered).sum();
        let oldest = stats
            .mailboxes
            .iter()
            .filter_map(|m| m.oldest_pending_accepted_at.as_ref())
            .min_by_key(|t| (t.seconds, t.nanos));
        let oldest_pending = oldest.map_or_else(|| "nothing pending".to_owned(), age);
        let checks = nems_runtime::ops::checks();
        let mesh = match checks.iter().find(|(name, _)| name == "mesh") {
            Some((_, None)) => "the MESH adapter in this process reaches MESH".to_owned(),
            Some((_, Some(why))) => format!("the MESH adapter in this process: {why}"),
            None => "the MESH adapter runs in another process (its /readyz says whether it \
                     reaches MESH); see the mailboxes' last errors"
                .to_owned(),
        };
        let (accepted_chart, delivered_chart) = {
            let samples = lock(&self.samples);
            let mut points: Vec<(u64, u64)> = samples.points.iter().copied().collect();
            points.push((status.events_accepted, delivered));
            let rate = |pick: fn(&(u64, u64)) -> u64| -> Vec<u64> {
                points
                    .windows(2)
                    .map(|w| pick(&w[1]).saturating_sub(pick(&w[0])))
                    .collect()
            };
            (chart(&rate(|p| p.0)), chart(&rate(|p| p.1)))
        };
        Ok(Overview {
            page: "overview",
            readiness: nems_runtime::ops::readiness(),
            checks,
            mesh,
            oldest_pending,
            status,
            backlog_bound: self.backlog_bound,
            dead_letters,
            mailboxes: stats.mailboxes.len(),
            accepted_chart,
            delivered_chart,
        }
        .render()?)
    }

    async fn mailboxes(&self, query: &[(String, String)]) -> Result<String, Failure> {
        let mut rows = self
            .client
            .clone()
            .get_mailbox_stats(pb::GetMailboxStatsRequest::default())
            .await?
            .into_inner()
            .mailboxes;
        let sort = value(query, "sort").unwrap_or("queued");
        let key = |m: &pb::MailboxStats| match sort {
            "in_flight" => m.in_flight,
            "delivered" => m.delivered,
            "dead_lettered" => m.dead_lettered,
            "suppressed" => m.suppressed,
            _ => m.queued,
        };
        match sort {
            "mailbox" => rows.sort_by(|a, b| a.mailbox.cmp(&b.mailbox)),
            "oldest" => rows.sort_by_key(|m| {
                let t = m.oldest_pending_accepted_at.as_ref();
                (
                    t.is_none(),
                    t.map(|t| (t.seconds, t.nanos)),
                    m.mailbox.clone(),
                )
            }),
            _ => rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.mailbox.cmp(&b.mailbox))),
        }
        // Pages of mailboxes; the last error is read for the page's mailboxes only.
        let page_no: usize = value(query, "page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1)
            .max(1);
        let total = rows.len();
        let start = (page_no - 1) * PAGE as usize;
        let mut shown = Vec::new();
        for m in rows.into_iter().skip(start).take(PAGE as usize) {
            let last_error = if m.dead_lettered > 0 {
                let (dead, _) = self
                    .list(pb::ListDeliveriesRequest {
                        mailbox: m.mailbox.clone(),
                        state: pb::DeliveryState::DeadLettered.into(),
                        newest_first: true,
                        page_size: 1,
                        ..Default::default()
                    })
                    .await?;
                dead.first()
                    .map(|d| format!("{} {}", d.error_code, d.error).trim().to_owned())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            shown.push(MailboxRow {
                oldest: m
                    .oldest_pending_accepted_at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), age),
                last_error,
                stats: m,
            });
        }
        let next = if start + PAGE as usize >= total {
            String::new()
        } else {
            format!(
                "/console/mailboxes?sort={}&page={}",
                encode(sort),
                page_no + 1
            )
        };
        Ok(Mailboxes {
            page: "mailboxes",
            columns: [
                ("mailbox", "Mailbox"),
                ("queued", "Queued"),
                ("in_flight", "In flight"),
                ("delivered", "Delivered"),
                ("dead_lettered", "Dead-lettered"),
                ("suppressed", "Suppressed"),
                ("oldest", "Oldest pending"),
            ]
            .into_iter()
            .map(|(key, label)| Column {
                key,
                label,
                numeric: key != "mailbox",
                sorted: key == sort,
            })
            .collect(),
            rows: shown,
            next,
        }
        .render()?)
    }

    async fn list(
        &self,
        request: pb::ListDeliveriesRequest,
    ) -> Result<(Vec<Row>, String), Failure> {
        let answer = self
            .client
            .clone()
            .list_deliveries(request)
            .await?
            .into_inner();
        Ok((
            answer.deliveries.iter().map(Row::of).collect(),
            answer.next_page_token,
        ))
    }

    async fn mailbox(&self, mailbox: &str, query: &[(String, String)]) -> Result<String, Failure> {
        let mailbox = mailbox.to_ascii_uppercase();
        let token = value(query, "page").unwrap_or_default();
        let (rows, next) = self
            .list(pb::ListDeliveriesRequest {
                mailbox: mailbox.clone(),
                page_size: PAGE,
                page_token: token.to_owned(),
                newest_first: true,
                ..Default::default()
            })
            .await?;
        Ok(Deliveries {
            page: "mailboxes",
            heading: format!("Mailbox {mailbox}: deliveries, newest first"),
            message: None,
            dead: false,
            next: next_link(&format!("/console/mailboxes/{mailbox}?"), &next),
            mailbox,
            rows,
        }
        .render()?)
    }

    async fn dead_letters(
        &self,
        query: &[(String, String)],
        message: Option<String>,
    ) -> Result<String, Failure> {
        let mailbox = value(query, "mailbox")
            .unwrap_or_default()
            .trim()
            .to_ascii_uppercase();
        let token = value(query, "page").unwrap_or_default();
        let (rows, next) = self
            .list(pb::ListDeliveriesRequest {
                mailbox: mailbox.clone(),
                state: pb::DeliveryState::DeadLettered.into(),
                page_size: PAGE,
                page_token: token.to_owned(),
                ..Default::default()
            })
            .await?;
        Ok(Deliveries {
            page: "dead-letters",
            heading: "Dead letters".into(),
            message,
            dead: true,
            next: next_link(
                &format!("/console/dead-letters?mailbox={}&", encode(&mailbox)),
                &next,
            ),
            mailbox,
            rows,
        }
        .render()?)
    }

    async fn confirm(&self, query: &[(String, String)]) -> Result<String, Failure> {
        let mailbox = required_mailbox(query)?;
        let count = self
            .client
            .clone()
            .get_mailbox_stats(pb::GetMailboxStatsRequest {
                mailbox: mailbox.clone(),
            })
            .await?
            .into_inner()
            .mailboxes
            .iter()
            .map(|m| m.dead_lettered)
            .sum();
        Ok(Confirm {
            page: "dead-letters",
            mailbox,
            count,
        }
        .render()?)
    }

    async fn redrive_one(&self, form: &[(String, String)]) -> Result<String, Failure> {
        let id: u64 = value(form, "id")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Failure::Bad("the form names no delivery id".into()))?;
        let answer = self
            .client
            .clone()
            .redrive_deliveries(pb::RedriveDeliveriesRequest {
                delivery_ids: vec![id],
                ..Default::default()
            })
            .await?
            .into_inner();
        let message = if answer.redriven == 1 {
            format!("Delivery {id} is queued again.")
        } else {
            format!(
                "Delivery {id} was not redriven (no longer a dead letter, or its payload is gone)."
            )
        };
        self.dead_letters(&[], Some(message)).await
    }

    async fn redrive_all(&self, form: &[(String, String)]) -> Result<String, Failure> {
        let mailbox = required_mailbox(form)?;
        if value(form, "confirm") != Some("yes") {
            return Err(Failure::Bad(
                "redriving a whole mailbox needs its confirmation".into(),
            ));
        }
        let answer = self
            .client
            .clone()
            .redrive_deliveries(pb::RedriveDeliveriesRequest {
                mailbox: mailbox.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let message = format!(
            "{} dead letters of {mailbox} are queued again.",
            answer.redriven
        );
        self.dead_letters(&[("mailbox".into(), mailbox)], Some(message))
            .await
    }

    /// Subscriptions found by ODS code, mailbox or rule (a GET form), or by NHS number (a
    /// POST form, so that the number is in no URL, history or access log). Lists never
    /// show an NHS number; the one searched for is shown as the operator typed it.
    async fn subscriptions(
        &self,
        form: &[(String, String)],
        nhs_number: Option<String>,
    ) -> Result<String, Failure> {
        use pb::list_subscriptions_request::Filter;
        let by = value(form, "by").unwrap_or("all").to_owned();
        let q = value(form, "q").unwrap_or_default().trim().to_owned();
        let rule = value(form, "rule").unwrap_or_default().to_owned();
        let filter = if let Some(nhs) = &nhs_number {
            Some(Filter::NhsNumber(nhs.clone()))
        } else {
            match by.as_str() {
                "ods" if !q.is_empty() => Some(Filter::OdsCode(q.clone())),
                "mailbox" if !q.is_empty() => Some(Filter::Mailbox(q.clone())),
                "rule" => {
                    let rule_type = pb::RuleType::from_str_name(&format!(
                        "RULE_TYPE_{}",
                        rule.replace('-', "_").to_ascii_uppercase()
                    ))
                    .filter(|r| *r != pb::RuleType::Unspecified)
                    .ok_or_else(|| Failure::Bad("choose a rule".into()))?;
                    Some(Filter::Rule(pb::RuleFilter {
                        rule_type: rule_type.into(),
                        organisation_code: q.clone(),
                    }))
                }
                _ => None,
            }
        };
        let token = value(form, "page").unwrap_or_default().to_owned();
        let answer = self
            .client
            .clone()
            .list_subscriptions(pb::ListSubscriptionsRequest {
                filter,
                page_size: PAGE,
                page_token: token,
                include_deleted: false,
            })
            .await?
            .into_inner();
        let rows = answer.subscriptions.iter().map(SubRow::of).collect();
        let next = if answer.next_page_token.is_empty() || nhs_number.is_some() {
            String::new()
        } else {
            format!(
                "/console/subscriptions?by={}&q={}&rule={}&page={}",
                encode(&by),
                encode(&q),
                encode(&rule),
                encode(&answer.next_page_token)
            )
        };
        Ok(Subscriptions {
            page: "subscriptions",
            rules: RULES,
            by,
            q,
            rule,
            nhs_number: nhs_number.unwrap_or_default(),
            next_nhs_page: answer.next_page_token,
            rows,
            next,
        }
        .render()?)
    }

    /// One subscription: its criteria (the NHS number of an explicit one stays hidden)
    /// and the recent deliveries to its mailbox of its event types.
    async fn subscription(&self, id: &str) -> Result<String, Failure> {
        use pb::list_subscriptions_request::Filter;
        let found = self
            .client
            .clone()
            .list_subscriptions(pb::ListSubscriptionsRequest {
                filter: Some(Filter::SubscriptionId(id.to_owned())),
                ..Default::default()
            })
            .await?
            .into_inner()
            .subscriptions;
        let record = found.into_iter().next().ok_or(Failure::NotFound)?;
        let criteria = record.criteria.clone().unwrap_or_default();
        let codes = &criteria.event_codes;
        let (recent, _) = self
            .list(pb::ListDeliveriesRequest {
                mailbox: record.mailbox.clone(),
                event_code: if codes.len() == 1 {
                    codes[0].clone()
                } else {
                    String::new()
                },
                newest_first: true,
                page_size: 20,
                ..Default::default()
            })
            .await?;
        let recent: Vec<Row> = recent
            .into_iter()
            .filter(|d| codes.is_empty() || codes.contains(&d.event_code))
            .collect();
        let mut facts = vec![
            ("Kind", SubRow::of(&record).kind),
            ("Population", SubRow::of(&record).population),
            ("Event types", codes.join(", ")),
            ("Owner ASID", record.owner_asid.clone()),
            ("Owner ODS code", record.owner_ods_code.clone()),
            ("Mailbox", record.mailbox.clone()),
            ("State", SubRow::of(&record).state),
            ("Created", at(record.created_at.as_ref())),
        ];
        if !criteria.service_type.is_empty() {
            facts.push(("Service type", criteria.service_type.clone()));
        }
        for a in &criteria.age {
            let cmp = match a.comparator() {
                pb::AgeComparator::Lt => "under",
                pb::AgeComparator::Gt => "over",
                _ => "exactly",
            };
            facts.push(("Age", format!("{cmp} {} years", a.years)));
        }
        match criteria.gp_registration() {
            pb::GpRegistration::RegisteredOnly => {
                facts.push(("GP registration", "registered only".into()));
            }
            pb::GpRegistration::UnregisteredOnly => {
                facts.push(("GP registration", "unregistered only".into()));
            }
            pb::GpRegistration::Unspecified => {}
        }
        if !criteria.tag.is_empty() {
            facts.push(("Tag", criteria.tag.clone()));
        }
        if let Some(end) = record.resource.as_ref().map(|r| r.end.clone())
            && !end.is_empty()
        {
            facts.push(("End", end));
        }
        Ok(SubscriptionPage {
            page: "subscriptions",
            id: record.id.clone(),
            facts,
            recent,
        }
        .render()?)
    }

    async fn directory(&self) -> Result<String, Failure> {
        let mut client = self.directory.clone();
        let systems = client
            .list_systems(pb::ListSystemsRequest {})
            .await?
            .into_inner()
            .systems;
        let mailboxes = client
            .list_mailboxes(pb::ListMailboxesRequest {})
            .await?
            .into_inner()
            .mailboxes;
        Ok(Directory {
            page: "directory",
            systems,
            mailboxes,
        }
        .render()?)
    }

    async fn reference_data(&self) -> Result<String, Failure> {
        let status = self
            .client
            .clone()
            .get_status(pb::GetStatusRequest::default())
            .await?
            .into_inner();
        let sets = status
            .reference_data
            .iter()
            .map(|r| RefRow {
                name: r.name.clone(),
                generation: r.generation,
                rows: r.rows,
                format: r.format.clone(),
                source: r.source.clone(),
                imported: at(r.imported_at.as_ref()),
            })
            .collect();
        Ok(ReferenceData {
            page: "reference-data",
            sets,
            patients: status.patients,
        }
        .render()?)
    }

    async fn replay_form(&self, query: &[(String, String)]) -> Result<String, Failure> {
        Ok(ReplayPage {
            page: "mailboxes",
            mailbox: value(query, "mailbox")
                .unwrap_or_default()
                .trim()
                .to_ascii_uppercase(),
            since: String::new(),
            event_code: String::new(),
            preview: None,
            message: None,
        }
        .render()?)
    }

    /// A replay from its form: first a dry run that says how many would go (with a
    /// confirmation form), then, confirmed, the replay itself.
    async fn replay(&self, form: &[(String, String)]) -> Result<String, Failure> {
        let mailbox = required_mailbox(form)?;
        let since_text = value(form, "since").unwrap_or_default().trim().to_owned();
        let since: prost_types::Timestamp = since_text.parse().map_err(|_| {
            Failure::Bad(format!(
                "`{since_text}` is not an RFC 3339 time; write e.g. 2026-12-01T09:00:00Z"
            ))
        })?;
        let event_code = value(form, "event").unwrap_or_default().trim().to_owned();
        let confirmed = value(form, "confirm") == Some("yes");
        let answer = self
            .client
            .clone()
            .replay_deliveries(pb::ReplayDeliveriesRequest {
                mailbox: mailbox.clone(),
                since: Some(since),
                event_code: event_code.clone(),
                dry_run: !confirmed,
                limit: 0,
            })
            .await?
            .into_inner();
        let gone = if answer.without_payload > 0 {
            format!(
                " ({} more were delivered without keeping their payload and cannot be replayed)",
                answer.without_payload
            )
        } else {
            String::new()
        };
        let (preview, message) = if confirmed {
            (
                None,
                Some(format!(
                    "{} deliveries of {mailbox} are queued again as new MESH messages{gone}.",
                    answer.replayed
                )),
            )
        } else {
            (
                Some(format!(
                    "{} deliveries of {mailbox} accepted since {since_text} would be resent{gone}.",
                    answer.replayed
                )),
                None,
            )
        };
        Ok(ReplayPage {
            page: "mailboxes",
            mailbox,
            since: since_text,
            event_code,
            preview,
            message,
        }
        .render()?)
    }

    async fn audit(&self, query: &[(String, String)]) -> Result<String, Failure> {
        let action = value(query, "action").unwrap_or_default().trim().to_owned();
        let answer = self
            .client
            .clone()
            .list_audit(pb::ListAuditRequest {
                action: action.clone(),
                page_size: PAGE,
                page_token: value(query, "page").unwrap_or_default().to_owned(),
                newest_first: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let rows = answer
            .records
            .iter()
            .map(|r| AuditRow {
                at: at(r.at.as_ref()),
                action: r.action.clone(),
                resource: format!("{} {}", r.resource_type, r.resource_id),
                outcome: r.outcome.clone(),
                user: r.user.clone(),
                asid: r.asid.clone(),
                count: r.count.max(1),
            })
            .collect();
        Ok(Audit {
            page: "audit",
            next: next_link(
                &format!("/console/audit?action={}&", encode(&action)),
                &answer.next_page_token,
            ),
            action,
            rows,
        }
        .render()?)
    }
}

/// Why a page could not be made.
#[derive(Debug)]
enum Failure {
    NotFound,
    Bad(String),
    Core(tonic::Status),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Core(status)
    }
}

impl From<askama::Error> for Failure {
    fn from(e: askama::Error) -> Self {
        Failure::Core(tonic::Status::internal(format!("console template: {e}")))
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct Overview {
    page: &'static str,
    readiness: Vec<(String, String)>,
    checks: Vec<(String, Option<String>)>,
    mesh: String,
    oldest_pending: String,
    status: pb::GetStatusResponse,
    backlog_bound: u64,
    dead_letters: u64,
    mailboxes: usize,
    accepted_chart: String,
    delivered_chart: String,
}

#[derive(Template)]
#[template(path = "console/mailboxes.html")]
struct Mailboxes {
    page: &'static str,
    columns: Vec<Column>,
    rows: Vec<MailboxRow>,
    next: String,
}

/// One mailbox's line: its counts, its oldest pending delivery's age and its last dead
/// letter's error.
struct MailboxRow {
    stats: pb::MailboxStats,
    oldest: String,
    last_error: String,
}

/// A sortable column of the mailbox table.
struct Column {
    key: &'static str,
    label: &'static str,
    numeric: bool,
    sorted: bool,
}

/// One ledger row as the pages show it (no payload and no patient data: the ledger holds
/// none).
struct Row {
    id: u64,
    local_id: String,
    event_code: String,
    mailbox: String,
    state: String,
    attempts: u32,
    accepted: String,
    updated: String,
    error_code: String,
    error: String,
}

impl Row {
    fn of(d: &pb::DeliveryRecord) -> Row {
        Row {
            id: d.delivery_id,
            local_id: d.local_id.clone(),
            event_code: d.event_code.clone(),
            mailbox: d.mailbox.clone(),
            state: crate::admin::delivery_state_name(d.state()),
            attempts: d.attempts,
            accepted: at(d.accepted_at.as_ref()),
            updated: at(d.updated_at.as_ref()),
            error_code: d.last_error_code.clone(),
            error: d.last_error.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/deliveries.html")]
struct Deliveries {
    page: &'static str,
    heading: String,
    message: Option<String>,
    dead: bool,
    mailbox: String,
    rows: Vec<Row>,
    next: String,
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
struct Confirm {
    page: &'static str,
    mailbox: String,
    count: u64,
}

/// The rules a generic subscription can have, for the search form.
const RULES: &[(&str, &str)] = &[
    (
        "cho-postcode-ccg",
        "CHO_POSTCODE_CCG (home postcode in ICB sub-location)",
    ),
    ("cho-gp-ccg", "CHO_GP_CCG (practice in ICB sub-location)"),
    ("gp-gp-gp", "GP_GP_GP (registered practice)"),
    (
        "uhv-postcode-lacode",
        "UHV_POSTCODE_LACODE (home postcode in local authority)",
    ),
    ("countrycode", "COUNTRYCODE (home postcode in country)"),
];

/// A subscription as a list shows it: never its NHS number.
struct SubRow {
    id: String,
    kind: String,
    population: String,
    events: String,
    owner: String,
    mailbox: String,
    state: String,
    created: String,
}

impl SubRow {
    fn of(r: &pb::SubscriptionRecord) -> SubRow {
        let c = r.criteria.clone().unwrap_or_default();
        let explicit = c.kind() == pb::SubscriptionKind::Explicit;
        SubRow {
            id: r.id.clone(),
            kind: if explicit { "explicit" } else { "generic" }.into(),
            population: if explicit {
                "one patient (NHS number not shown)".into()
            } else {
                format!(
                    "{} {}",
                    c.rule_type().as_str_name().trim_start_matches("RULE_TYPE_"),
                    c.organisation_code
                )
            },
            events: c.event_codes.join(", "),
            owner: r.owner_ods_code.clone(),
            mailbox: r.mailbox.clone(),
            state: r
                .state()
                .as_str_name()
                .trim_start_matches("SUBSCRIPTION_STATE_")
                .to_ascii_lowercase(),
            created: at(r.created_at.as_ref()),
        }
    }
}

#[derive(Template)]
#[template(path = "console/subscriptions.html")]
struct Subscriptions {
    page: &'static str,
    rules: &'static [(&'static str, &'static str)],
    by: String,
    q: String,
    rule: String,
    nhs_number: String,
    next_nhs_page: String,
    rows: Vec<SubRow>,
    next: String,
}

#[derive(Template)]
#[template(path = "console/subscription.html")]
struct SubscriptionPage {
    page: &'static str,
    id: String,
    facts: Vec<(&'static str, String)>,
    recent: Vec<Row>,
}

#[derive(Template)]
#[template(path = "console/directory.html")]
struct Directory {
    page: &'static str,
    systems: Vec<pb::SpineSystem>,
    mailboxes: Vec<pb::MeshMailbox>,
}

struct RefRow {
    name: String,
    generation: u64,
    rows: u64,
    format: String,
    source: String,
    imported: String,
}

#[derive(Template)]
#[template(path = "console/reference-data.html")]
struct ReferenceData {
    page: &'static str,
    sets: Vec<RefRow>,
    patients: u64,
}

#[derive(Template)]
#[template(path = "console/replay.html")]
struct ReplayPage {
    page: &'static str,
    mailbox: String,
    since: String,
    event_code: String,
    preview: Option<String>,
    message: Option<String>,
}

struct AuditRow {
    at: String,
    action: String,
    resource: String,
    outcome: String,
    user: String,
    asid: String,
    count: u32,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct Audit {
    page: &'static str,
    action: String,
    rows: Vec<AuditRow>,
    next: String,
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct Login {
    page: &'static str,
    message: Option<String>,
}

#[derive(Template)]
#[template(path = "console/refused.html")]
struct Refused<'a> {
    page: &'static str,
    heading: &'a str,
    text: &'a str,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn page(status: StatusCode, html: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'",
        ),
    ] {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

fn refused(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let heading = status.canonical_reason().unwrap_or("Refused");
    let html = Refused {
        page: "",
        heading,
        text,
    }
    .render()
    .unwrap_or_else(|_| text.to_owned());
    page(status, html)
}

/// The bearer token a request presents: `Authorization: Bearer`, else the login cookie.
fn presented_token<B>(req: &Request<B>) -> Option<String> {
    let headers = req.headers();
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, token) = auth.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response<Full<Bytes>> {
    let html = Login {
        page: "",
        message: message.map(str::to_owned),
    }
    .render()
    .unwrap_or_default();
    let mut response = page(status, html);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Bearer realm=\"nems console\""),
        );
    }
    response
}

/// The login form's answer: the cookie and a redirect to the overview, or the form again.
async fn sign_in(req: Request<Incoming>, tokens: &Tokens) -> Response<Full<Bytes>> {
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(_) => return login_page(StatusCode::BAD_REQUEST, Some("The form was cut off.")),
    };
    let token = value(&form, "token").unwrap_or_default().trim().to_owned();
    if tokens.who(&token).is_none() {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid (or has been withdrawn)."),
        );
    }
    let cookie =
        format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=43200");
    redirect("/console/", http::HeaderValue::from_str(&cookie).ok())
}

fn sign_out() -> Response<Full<Bytes>> {
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    redirect("/console/login", http::HeaderValue::from_str(&cookie).ok())
}

fn redirect(to: &'static str, cookie: Option<http::HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = page(StatusCode::SEE_OTHER, String::new());
    let headers = response.headers_mut();
    headers.insert("location", http::HeaderValue::from_static(to));
    if let Some(cookie) = cookie {
        headers.insert("set-cookie", cookie);
    }
    response
}

/// `html` with who is signed in, and a sign-out button, in its header.
fn with_user(html: String, user: Option<&str>) -> String {
    match user {
        // The name needs no escaping: `is_console_user_name` allows no markup.
        Some(name) if nems_runtime::ops::is_console_user_name(name) => html.replacen(
            "<!--user-->",
            &format!(
                "<span id=\"user\">{name}</span><form class=\"inline\" method=\"post\" \
                 action=\"/console/logout\"><button id=\"sign-out\">Sign out</button></form>"
            ),
            1,
        ),
        _ => html,
    }
}

/// True unless the browser says the form came from another origin.
fn same_origin<B>(req: &Request<B>) -> bool {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, Failure> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| Failure::Bad("the form is too large or was cut off".into()))?
        .to_bytes();
    Ok(parse_form(&String::from_utf8_lossy(&body)))
}

/// `application/x-www-form-urlencoded` pairs (also a query string).
fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn required_mailbox(pairs: &[(String, String)]) -> Result<String, Failure> {
    let mailbox = value(pairs, "mailbox")
        .unwrap_or_default()
        .trim()
        .to_ascii_uppercase();
    if mailbox.is_empty() {
        return Err(Failure::Bad("name the mailbox".into()));
    }
    Ok(mailbox)
}

fn next_link(prefix: &str, token: &str) -> String {
    if token.is_empty() {
        String::new()
    } else {
        format!("{prefix}page={}", encode(token))
    }
}

fn at(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// How long ago `ts` was, in words ("3 min 20 s").
fn age(ts: &prost_types::Timestamp) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let secs = (now - ts.seconds).max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86400 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d {} h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// A bar chart of `values` (one per minute, oldest first) as inline SVG.
fn chart(values: &[u64]) -> String {
    const W: u64 = 600;
    const H: u64 = 120;
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg role=\"img\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\">",
        H + 20,
        H + 20
    );
    if values.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"10\" y=\"{}\" fill=\"#4c6272\">no full minute sampled yet</text>",
            H / 2
        );
    }
    let slot = W / SAMPLES as u64;
    let first = SAMPLES.saturating_sub(values.len()) as u64;
    for (i, v) in values.iter().enumerate() {
        let h = v * H / max;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"#005eb8\"><title>{v}</title></rect>",
            (first + i as u64) * slot,
            H - h,
            slot.saturating_sub(1).max(1)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"{}\" fill=\"#4c6272\">peak {max}/min</text></svg>",
        H + 16
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_values_encode() {
        assert_eq!(
            parse_form("mailbox=RR8%2BX+1&confirm=yes&x"),
            vec![
                ("mailbox".into(), "RR8+X 1".into()),
                ("confirm".into(), "yes".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        let post = |origin: Option<&str>, site: Option<&str>| {
            let mut b = Request::builder()
                .method("POST")
                .header("host", "127.0.0.1:9000");
            if let Some(o) = origin {
                b = b.header("origin", o);
            }
            if let Some(s) = site {
                b = b.header("sec-fetch-site", s);
            }
            same_origin(&b.body(()).unwrap())
        };
        assert!(post(Some("http://127.0.0.1:9000"), Some("same-origin")));
        assert!(post(None, None));
        assert!(!post(Some("http://evil.example"), None));
        assert!(!post(Some("http://127.0.0.1:9000"), Some("cross-site")));
    }

    #[test]
    fn token_files_name_operators_by_the_hash_of_their_token() {
        let text = format!(
            "# who may open the console\n\n{}\n{}\n",
            Tokens::line("alice", "secret-a"),
            Tokens::line("bob.smith@nhs", "secret-b")
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.who("secret-a"), Some("alice"));
        assert_eq!(tokens.who("secret-b"), Some("bob.smith@nhs"));
        assert_eq!(tokens.who("secret-c"), None);
        assert_eq!(tokens.who(""), None);
        assert!(!text.contains("secret-a"), "the file holds hashes only");
        let bad = |text: &str| Tokens::parse(text).unwrap_err();
        assert_eq!(bad(""), "the file names no operator");
        assert!(bad("alice").starts_with("line 1:"));
        assert!(bad("alice sha256:abcd").contains("64 hex digits"));
        assert!(bad("al<ice> sha256:00").contains("a name is"));
        assert!(
            bad(&format!(
                "\n{}\n{}",
                Tokens::line("a", "x"),
                Tokens::line("a", "y")
            ))
            .starts_with("line 3: the name is given twice")
        );
    }

    #[test]
    fn a_token_comes_from_the_bearer_header_or_the_login_cookie() {
        let with =
            |name: &str, value: &str| Request::builder().header(name, value).body(()).unwrap();
        assert_eq!(
            presented_token(&with("authorization", "Bearer abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(presented_token(&with("authorization", "Basic abc")), None);
        assert_eq!(
            presented_token(&with("cookie", "x=1; nems_console=tok; y=2")).as_deref(),
            Some("tok")
        );
        assert_eq!(presented_token(&with("cookie", "nems_consolex=tok")), None);
        assert_eq!(presented_token(&Request::new(())), None);
    }

    #[test]
    fn the_signed_in_operator_is_shown_in_the_header() {
        let html = "<header><!--user--></header>".to_owned();
        assert!(with_user(html.clone(), Some("alice")).contains("<span id=\"user\">alice</span>"));
        assert_eq!(with_user(html.clone(), None), html);
        assert_eq!(with_user(html.clone(), Some("<b>")), html, "never markup");
    }

    #[test]
    fn charts_scale_to_their_peak() {
        let svg = chart(&[0, 5, 10]);
        assert!(svg.contains("peak 10/min"));
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(chart(&[]).contains("no full minute"));
    }
}
