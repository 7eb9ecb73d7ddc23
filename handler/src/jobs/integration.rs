//! The `IntegrationEvents` Service Bus consumer: CloudEvents 1.0 from other systems, applied exactly once in effect.
//!
//! Each message is decoded ([`parse`]: the envelope, then the `data` of its type, checked field by field as
//! `docs/events.md` describes), turned into one [`IntegrationEffect`] and handed to
//! [`IntegrationStore::apply_integration_event`](crate::store::IntegrationStore::apply_integration_event), which writes the inbox row
//! keyed by the CloudEvents `(source, id)` in the same transaction as the effect. A redelivery, or a second copy
//! racing the first, finds the inbox row and changes nothing. `Metadata.MessageId` is never used for this: the
//! host copies top-level body keys into Metadata, so a body can forge it.
//!
//! Outcomes and what the host does with them:
//! - applied or duplicate: 2xx, the message is completed;
//! - poison (not JSON, not a CloudEvent, unknown type, invalid data, unknown tenant or plan): stored in
//!   `quarantine_messages` with the reason and the raw body, counted, and completed with 2xx, so Service Bus does
//!   not redeliver it ten times; `handler quarantine replay <id>` runs it again once the cause is fixed;
//! - transient (the store is unavailable, a deadlock, any unexpected error): non-2xx, so the host abandons the
//!   message and Service Bus redelivers it (the log line carries `DeliveryCount`).

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Datelike, Months, NaiveDate, SecondsFormat, TimeDelta, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::error::AppError;
use crate::metering::period::BillingCalendar;
use crate::state::AppState;
use crate::store::{
    ApplyOutcome, DocumentStatus, DocumentUpsert, InboxEntry, IntegrationEffect, QuarantinedMessage, TenantStatus,
    UsageEvent,
};
use crate::store::{clip_utf16 as clip, utf16_width as width};
use crate::telemetry::metrics::{self, ConsumerOutcome};

/// The event types this consumer applies, with the `data` schema each is checked against (`docs/events.md`).
pub const EVENT_TYPES: &[&str] = &[
    "meterline.tenant.upserted.v1",
    "meterline.tenant.suspended.v1",
    "meterline.tenant.reactivated.v1",
    "meterline.plan.changed.v1",
    "meterline.documents.upserted.v1",
    "meterline.usage.reported.v1",
];

/// Messages quarantined by this process since it started (also logged as `metric=integration.quarantined`).
static QUARANTINED: AtomicU64 = AtomicU64::new(0);

/// How many messages this process has quarantined.
pub fn quarantined_count() -> u64 {
    QUARANTINED.load(Ordering::Relaxed)
}

/// A decoded, valid integration message.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub effect: IntegrationEffect,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Applied {
        event_type: String,
        id: String,
        source: String,
    },
    Duplicate {
        event_type: String,
        id: String,
        source: String,
    },
    /// It can never be applied as it is; the reason says why.
    Poison(String),
}

/// The CloudEvents 1.0 envelope (structured mode). Extension attributes are allowed and ignored.
#[derive(Debug, Deserialize)]
struct Envelope {
    specversion: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    #[serde(rename = "type")]
    event_type: Option<Value>,
    time: Option<Value>,
    datacontenttype: Option<Value>,
    data: Option<Value>,
}

/// A text of 1 to `max` UTF-16 code units (as SQL Server's `NVARCHAR(n)` counts, so both stores take the same).
fn required_text(value: Option<Value>, name: &str, max: usize) -> Result<String, String> {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() && width(&s) <= max => Ok(s),
        Some(Value::String(_)) => Err(format!("`{name}` must be 1 to {max} characters")),
        None | Some(Value::Null) => Err(format!("`{name}` is required")),
        Some(_) => Err(format!("`{name}` must be a string")),
    }
}

/// Decodes and validates one message body at `now`; the error is the quarantine reason.
pub fn parse(body: &str, now: DateTime<Utc>) -> Result<DecodedEvent, String> {
    // One leading byte order mark is no part of the JSON text, and a parser may ignore it (RFC 8259 §8.1): some
    // senders' UTF-8 encoders write one. Only the first: a second is a character where JSON allows none.
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a CloudEvent: the body is not a JSON object".into());
    }
    let envelope: Envelope = serde_json::from_value(value).map_err(|e| format!("not a CloudEvent: {e}"))?;
    let specversion = required_text(envelope.specversion, "specversion", 10)?;
    if specversion != "1.0" {
        return Err(format!("unsupported CloudEvents specversion {specversion:?} (expected \"1.0\")"));
    }
    let id = required_text(envelope.id, "id", 200)?;
    let source = required_text(envelope.source, "source", 200)?;
    // `(source, id)` is the inbox key, compared exactly on both stores; but SQL Server's `=` ignores trailing spaces
    // under every collation, so `a` and `a ` would be one event there and two on SQLite.
    for (name, key) in [("id", &id), ("source", &source)] {
        if key.ends_with(' ') {
            return Err(format!(
                "`{name}` must not end with a space: SQL Server compares keys without trailing spaces, so it could \
                 not be told from the same {name} without them"
            ));
        }
    }
    let event_type = required_text(envelope.event_type, "type", 200)?;
    if let Some(time) = envelope.time.filter(|t| !t.is_null()) {
        let Some(time) = time.as_str() else { return Err("`time` must be an RFC 3339 timestamp".into()) };
        rfc3339(time).map_err(|problem| format!("`time` {problem}"))?;
    }
    if let Some(content_type) = envelope.datacontenttype.filter(|t| !t.is_null()) {
        let ok = content_type.as_str().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("application/json") || (t.starts_with("application/") && t.contains("+json"))
        });
        if !ok {
            return Err(format!("`datacontenttype` must be application/json, got {content_type}"));
        }
    }
    if !EVENT_TYPES.contains(&event_type.as_str()) {
        return Err(format!("unknown event type {event_type:?}; this consumer applies {}", EVENT_TYPES.join(", ")));
    }
    let data = match envelope.data {
        Some(Value::Object(map)) => Value::Object(map),
        None | Some(Value::Null) => return Err("`data` is required".into()),
        Some(_) => return Err("`data` must be a JSON object".into()),
    };
    let effect = effect_of(&event_type, &source, &id, data, now).map_err(|e| format!("invalid data: {e}"))?;
    Ok(DecodedEvent { id, source, event_type, effect })
}

/// An RFC 3339 timestamp (section 5.6: `date-fullyear` is exactly four digits, so no sign and no fifth digit; `T`
/// or a space, `Z` or an offset), or why `text` is not one. chrono's `FromStr`, which serde uses for a
/// `DateTime`, also takes ISO 8601's expanded years (`-0001`, `+10000`): those are refused here, with the reason.
fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    const RULE: &str = "must be an RFC 3339 timestamp with a four-digit year, e.g. 2026-11-24T09:30:00Z";
    if text.starts_with(['+', '-']) {
        return Err(format!("{RULE}: {text:?} has a signed year"));
    }
    // chrono also reads a Unicode minus sign in the offset, which RFC 3339's ABNF (ASCII `+`/`-`) does not.
    if !text.is_ascii() {
        return Err(format!("{RULE}: {text:?} is not one (a character outside ASCII)"));
    }
    let parsed = DateTime::parse_from_rfc3339(text);
    // A leap second (`:60`): chrono reads it at any minute and places the instant in the next second, which at a
    // period's last second bills it in the next period. No leap second has been inserted since 2016 and none is
    // scheduled, so no sender has a true one to report: refused, with the reason.
    if let Ok(t) = &parsed
        && t.timestamp_subsec_nanos() >= 1_000_000_000
    {
        return Err(format!("{RULE}: {text:?} is a leap second (:60), which usage is not reported at"));
    }
    parsed.map(|t| t.with_timezone(&Utc)).map_err(|e| {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 4 && text.as_bytes().get(digits) == Some(&b'-') {
            format!("{RULE}: {text:?} has a {digits}-digit year")
        } else {
            format!("{RULE}: {text:?} is not one ({e})")
        }
    })
}

/// A calendar date `YYYY-MM-DD` with a four-digit year from 0001 (what SQL Server's `DATE` holds), or why `text`
/// is not one. chrono's `FromStr` for `NaiveDate` also takes signed and five-digit years, and year 0.
fn calendar_date(text: &str) -> Result<NaiveDate, String> {
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(date) if shaped && date.year() >= 1 => Ok(date),
        _ => Err(format!("must be a date YYYY-MM-DD from 0001-01-01 to 9999-12-31, got {text:?}")),
    }
}

/// How far after the consumer's clock a reported usage's `occurredAt` may lie. Usage is reported after it
/// happened; a later instant is the sender's clock running ahead of ours. Clocks synchronised by NTP (every Azure
/// host) disagree by well under a second, so 5 minutes is generous for a sender's clock and still too little to
/// debit a period before it begins by more than its first minutes. A report quarantined for it applies when
/// replayed once its time has passed (a replay checks against the clock of the replay).
pub const USAGE_CLOCK_TOLERANCE: TimeDelta = TimeDelta::minutes(5);

/// How many billing periods before the current one a reported usage may have occurred in: the statement of the
/// previous period, until it is written, adjusts the 24 periods before it (`UsageStore::unbilled_usage`; the first
/// month close looks back as far, `jobs::rollup`), so usage older than that is never billed.
pub const USAGE_LOOKBACK_PERIODS: u32 = crate::jobs::rollup::FIRST_CLOSE_LOOKBACK_MONTHS + 1;

/// The earliest instant a reported usage's `occurredAt` may lie at when it is processed at `now`, for a tenant on
/// `calendar`: the start of the oldest billing period a statement can still be written or adjusted for. (The
/// latest is [`USAGE_CLOCK_TOLERANCE`] after `now`, which `parse` checks without the tenant.)
fn earliest_usage(calendar: &BillingCalendar, now: DateTime<Utc>) -> DateTime<Utc> {
    let current = calendar.period_containing(now);
    calendar.period_starting(current.start - Months::new(USAGE_LOOKBACK_PERIODS)).starts_at
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Field-level checks of one `data` object; each problem is `path: reason`.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn text(&mut self, path: &str, value: &str, min: usize, max: usize) {
        if width(value.trim()) < min || width(value) > max {
            self.0.push(format!("{path}: must be {min} to {max} characters"));
        }
    }

    fn opt_text(&mut self, path: &str, value: &Option<String>, max: usize) {
        if let Some(v) = value {
            self.text(path, v, 1, max);
        }
    }

    fn fail(&mut self, path: &str, reason: impl Into<String>) {
        self.0.push(format!("{path}: {}", reason.into()));
    }

    fn finish<T>(self, value: T) -> Result<T, String> {
        if self.0.is_empty() { Ok(value) } else { Err(self.0.join("; ")) }
    }
}

fn typed<T: DeserializeOwned>(data: Value) -> Result<T, String> {
    serde_json::from_value(data).map_err(|e| e.to_string())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TenantUpserted {
    tenant_id: Uuid,
    name: String,
    plan_code: String,
    #[serde(default)]
    entra_tenant_id: Option<Uuid>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TenantStatusChanged {
    tenant_id: Uuid,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlanChanged {
    tenant_id: Uuid,
    plan_code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentsUpserted {
    tenant_id: Uuid,
    documents: Vec<DocumentData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentData {
    id: Uuid,
    title: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    body: Option<String>,
    doc_type: String,
    #[serde(default)]
    jurisdiction: Option<String>,
    status: String,
    #[serde(default)]
    effective_date: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UsageReported {
    tenant_id: Uuid,
    meter: String,
    units: i64,
    occurred_at: String,
    #[serde(default)]
    client_id: Option<String>,
}

/// The most documents one message may carry (they are applied in one transaction).
pub const MAX_DOCUMENTS_PER_MESSAGE: usize = 100;
/// The most units one usage message may report (the usage ledger stores units as a 32-bit integer).
pub const MAX_REPORTED_UNITS: i64 = 1_000_000_000;

fn effect_of(
    event_type: &str,
    source: &str,
    id: &str,
    data: Value,
    now: DateTime<Utc>,
) -> Result<IntegrationEffect, String> {
    let mut checks = Checks::default();
    match event_type {
        "meterline.tenant.upserted.v1" => {
            let d: TenantUpserted = typed(data)?;
            checks.text("data.name", &d.name, 1, 200);
            checks.text("data.planCode", &d.plan_code, 1, 64);
            checks.finish(IntegrationEffect::UpsertTenant {
                tenant_id: d.tenant_id,
                name: d.name.trim().to_owned(),
                plan_code: d.plan_code.trim().to_owned(),
                entra_tenant_id: d.entra_tenant_id,
            })
        }
        "meterline.tenant.suspended.v1" | "meterline.tenant.reactivated.v1" => {
            let d: TenantStatusChanged = typed(data)?;
            checks.opt_text("data.reason", &d.reason, 500);
            let status = if event_type.contains("suspended") { TenantStatus::Suspended } else { TenantStatus::Active };
            checks.finish(IntegrationEffect::SetTenantStatus { tenant_id: d.tenant_id, status })
        }
        "meterline.plan.changed.v1" => {
            let d: PlanChanged = typed(data)?;
            checks.text("data.planCode", &d.plan_code, 1, 64);
            checks.finish(IntegrationEffect::ChangePlan {
                tenant_id: d.tenant_id,
                plan_code: d.plan_code.trim().to_owned(),
            })
        }
        "meterline.documents.upserted.v1" => {
            let d: DocumentsUpserted = typed(data)?;
            if d.documents.is_empty() || d.documents.len() > MAX_DOCUMENTS_PER_MESSAGE {
                checks.fail("data.documents", format!("must hold 1 to {MAX_DOCUMENTS_PER_MESSAGE} documents"));
            }
            let mut documents = Vec::with_capacity(d.documents.len());
            let mut seen = std::collections::HashSet::new();
            for (i, doc) in d.documents.into_iter().enumerate() {
                let path = format!("data.documents[{i}]");
                if !seen.insert(doc.id) {
                    checks.fail(&format!("{path}.id"), "appears twice in the message");
                }
                checks.text(&format!("{path}.title"), &doc.title, 1, 300);
                checks.opt_text(&format!("{path}.summary"), &doc.summary, 2000);
                checks.text(&format!("{path}.docType"), &doc.doc_type, 1, 64);
                checks.opt_text(&format!("{path}.jurisdiction"), &doc.jurisdiction, 64);
                let status = DocumentStatus::parse(&doc.status);
                if status.is_none() {
                    checks.fail(&format!("{path}.status"), "must be draft, published or archived");
                }
                if doc.tags.len() > 20 {
                    checks.fail(&format!("{path}.tags"), "at most 20 tags");
                }
                let mut tags: Vec<String> = doc.tags.iter().map(|t| t.trim().to_lowercase()).collect();
                for (j, tag) in tags.iter().enumerate() {
                    checks.text(&format!("{path}.tags[{j}]"), tag, 1, 64);
                }
                tags.sort();
                tags.dedup();
                let effective_date = doc.effective_date.as_deref().and_then(|text| {
                    calendar_date(text).map_err(|problem| checks.fail(&format!("{path}.effectiveDate"), problem)).ok()
                });
                documents.push(DocumentUpsert {
                    id: doc.id,
                    title: doc.title.trim().to_owned(),
                    summary: doc.summary,
                    body: doc.body,
                    doc_type: crate::store::document_code(&doc.doc_type),
                    jurisdiction: doc.jurisdiction.as_deref().map(crate::store::document_code),
                    status: status.unwrap_or(DocumentStatus::Draft),
                    effective_date,
                    tags,
                });
            }
            checks.finish(IntegrationEffect::UpsertDocuments {
                tenant_id: d.tenant_id,
                actor: clip(&format!("integration:{source}"), 128),
                documents,
            })
        }
        "meterline.usage.reported.v1" => {
            let d: UsageReported = typed(data)?;
            let meter_ok = (1..=64).contains(&d.meter.len())
                && d.meter.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
            if !meter_ok {
                checks.fail("data.meter", "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'");
            }
            if !(1..=MAX_REPORTED_UNITS).contains(&d.units) {
                checks.fail("data.units", format!("must be 1 to {MAX_REPORTED_UNITS}"));
            }
            checks.opt_text("data.clientId", &d.client_id, 128);
            // The earliest instant depends on the tenant's calendar: `process` checks it once it has the tenant.
            let occurred_at = match rfc3339(&d.occurred_at) {
                Ok(t) if t > now + USAGE_CLOCK_TOLERANCE => {
                    checks.fail(
                        "data.occurredAt",
                        format!(
                            "{} is more than {} minutes after this consumer's clock ({}): usage is reported after it \
                             happens",
                            instant(t),
                            USAGE_CLOCK_TOLERANCE.num_minutes(),
                            instant(now)
                        ),
                    );
                    now
                }
                Ok(t) => t,
                Err(problem) => {
                    checks.fail("data.occurredAt", problem);
                    now
                }
            };
            let occurred_at = DateTime::from_timestamp_micros(occurred_at.timestamp_micros()).unwrap_or(occurred_at);
            // The UTC month; `process` moves it to the tenant's own period once it has read the tenant.
            let utc = BillingCalendar::default().period_containing(occurred_at);
            let (period_start, period_end) = (utc.start, utc.end);
            let event = UsageEvent {
                event_id: crate::store::deterministic_id("meterline.usage.reported.v1", &[source, id]),
                request_id: clip(id, 64),
                tenant_id: Some(d.tenant_id),
                client_id: d.client_id,
                principal_id: None,
                operation_id: d.meter,
                method: "EVENT".into(),
                route_template: "integration:meterline.usage.reported.v1".into(),
                status: 200,
                units: d.units,
                billable: true,
                overage_units: 0,
                latency_micros: 0,
                request_bytes: 0,
                response_bytes: 0,
                occurred_at,
                recorded_at: now,
                lease_id: None,
                refusal: None,
            };
            checks.finish(IntegrationEffect::RecordUsage { event, period_start, period_end })
        }
        other => Err(format!("no schema for {other}")),
    }
}

/// Decodes and applies one message body. `Err` is transient (the host should redeliver); a message that can
/// never apply is `Ok(Verdict::Poison)` and nothing was written.
pub async fn process(state: &AppState, body: &str) -> Result<Verdict, AppError> {
    let now = state.clock.now();
    let event = match parse(body, now) {
        Ok(event) => event,
        Err(reason) => return Ok(Verdict::Poison(reason)),
    };
    let inbox = InboxEntry {
        source: event.source.clone(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        processed_at: now,
    };
    let (event_type, id, source, mut effect) = (event.event_type, event.id, event.source, event.effect);
    // Reported usage debits the tenant's period that contains it, by the tenant's own calendar, if a statement can
    // still bill that period. (An unknown tenant is the store's to refuse.)
    if let IntegrationEffect::RecordUsage { event: usage, period_start, period_end } = &mut effect
        && let Some(tenant) = usage.tenant_id
        && let Some(tenant) = state.lookups.tenant(tenant).await?
    {
        let calendar = BillingCalendar::of(&tenant);
        let earliest = earliest_usage(&calendar, now);
        if usage.occurred_at < earliest {
            return Ok(Verdict::Poison(format!(
                "invalid data: data.occurredAt: {} is before {}, the start of the tenant's billing period \
                 {USAGE_LOOKBACK_PERIODS} before the current one, the oldest a statement can still bill or adjust",
                instant(usage.occurred_at),
                instant(earliest)
            )));
        }
        let period = calendar.period_containing(usage.occurred_at);
        (*period_start, *period_end) = (period.start, period.end);
    }
    Ok(match state.store.apply_integration_event(&inbox, &effect).await? {
        ApplyOutcome::Applied => {
            // Tenants and plans may have changed: this process's cached lookups must not serve the old rows.
            state.lookups.invalidate();
            Verdict::Applied { event_type, id, source }
        }
        ApplyOutcome::Duplicate => Verdict::Duplicate { event_type, id, source },
        ApplyOutcome::Rejected(reason) => Verdict::Poison(format!("cannot apply {event_type} {id}: {reason}")),
    })
}

/// One Service Bus delivery of an integration message, as the trigger hands it over (`functions::dispatch`
/// decodes the host's envelope into this).
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The message body as text.
    pub body: &'a str,
    /// The broker's message id: for the log and the quarantine row only, never for deduplication.
    pub message_id: Option<&'a str>,
    pub delivery_count: Option<i64>,
    pub content_type: Option<&'a str>,
}

/// Handles one Service Bus delivery of `IntegrationEvents`; the answer is the one line for the host's log.
pub async fn consume(state: &AppState, message: Delivery<'_>) -> Result<String, AppError> {
    let delivery_count = message.delivery_count;
    let message_id = message.message_id.unwrap_or("(none)");
    let delivery = delivery_count.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let verdict = match process(state, message.body).await {
        Ok(verdict) => verdict,
        Err(err) => {
            metrics::consumer_outcome(ConsumerOutcome::Retried);
            tracing::warn!(
                message_id,
                delivery_count,
                error = ?err,
                "IntegrationEvents: transient failure; the host abandons the message and Service Bus redelivers it"
            );
            return Err(err);
        }
    };
    metrics::consumer_outcome(match &verdict {
        Verdict::Applied { .. } => ConsumerOutcome::Processed,
        Verdict::Duplicate { .. } => ConsumerOutcome::Duplicate,
        Verdict::Poison(_) => ConsumerOutcome::Quarantined,
    });
    let line = match verdict {
        Verdict::Applied { event_type, id, source } => {
            format!(
                "IntegrationEvents: message {message_id} delivery {delivery}: applied {event_type} id={id} source={source}"
            )
        }
        Verdict::Duplicate { event_type, id, source } => format!(
            "IntegrationEvents: message {message_id} delivery {delivery}: duplicate {event_type} id={id} source={source}, already applied"
        ),
        Verdict::Poison(reason) => {
            let mut quarantined = QuarantinedMessage {
                id: state.ids.new_id(),
                received_at: state.clock.now(),
                message_id: message.message_id.map(|m| clip(m, 128)),
                delivery_count: delivery_count.and_then(|n| i32::try_from(n).ok()),
                content_type: message.content_type.map(|c| clip(c, 128)),
                reason: clip(&reason, 2000),
                raw_body: message.body.to_owned(),
                replayed_at: None,
                identity: Some(QuarantinedMessage::identity_of(message.message_id, message.body)),
                deliveries: 1,
                last_received_at: None,
            };
            // A redelivery of a message quarantined before lands on that row.
            quarantined.id = state.store.quarantine_message(&quarantined).await?;
            let total = QUARANTINED.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                metric = "integration.quarantined",
                quarantined_total = total,
                quarantine_id = %quarantined.id,
                message_id,
                delivery_count,
                reason = %quarantined.reason,
                "IntegrationEvents: poison message quarantined and completed"
            );
            format!(
                "IntegrationEvents: message {message_id} delivery {delivery}: quarantined as {}: {}",
                quarantined.id, quarantined.reason
            )
        }
    };
    tracing::info!(message_id, delivery_count, "{line}");
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-11-24T10:00:00Z".parse().unwrap()
    }

    fn event(event_type: &str, data: Value) -> String {
        json!({"specversion": "1.0", "id": "e-1", "source": "/crm", "type": event_type, "data": data}).to_string()
    }

    #[test]
    fn envelopes_are_checked_before_data() {
        assert!(parse("hello", now()).unwrap_err().starts_with("not JSON"));
        let plan = json!({"tenantId": Uuid::nil(), "planCode": "pro"});
        let bom = format!("\u{feff}{}", event("meterline.plan.changed.v1", plan));
        assert_eq!(parse(&bom, now()).unwrap().id, "e-1", "one leading byte order mark is ignored");
        let two = format!("\u{feff}{bom}");
        assert!(parse(&two, now()).unwrap_err().starts_with("not JSON"), "a second one is not JSON");
        assert!(parse("[1]", now()).unwrap_err().contains("not a JSON object"));
        let no_id = json!({"specversion": "1.0", "source": "/x", "type": "meterline.plan.changed.v1", "data": {}});
        assert_eq!(parse(&no_id.to_string(), now()).unwrap_err(), "`id` is required");
        let v03 = json!({"specversion": "0.3", "id": "1", "source": "/x", "type": "t"});
        assert!(parse(&v03.to_string(), now()).unwrap_err().contains("specversion"));
        assert!(parse(&event("meterline.nope.v1", json!({})), now()).unwrap_err().starts_with("unknown event type"));
        let spaced =
            json!({"specversion": "1.0", "id": "Order-1 ", "source": "/x", "type": "meterline.plan.changed.v1"});
        assert!(parse(&spaced.to_string(), now()).unwrap_err().starts_with("`id` must not end with a space"));
        let spaced = json!({"specversion": "1.0", "id": "1", "source": "/x ", "type": "meterline.plan.changed.v1"});
        assert!(parse(&spaced.to_string(), now()).unwrap_err().starts_with("`source` must not end with a space"));
        let xml = json!({"specversion": "1.0", "id": "1", "source": "/x", "type": "meterline.plan.changed.v1",
            "datacontenttype": "application/xml", "data": {}});
        assert!(parse(&xml.to_string(), now()).unwrap_err().contains("datacontenttype"));
    }

    #[test]
    fn data_is_validated_field_by_field() {
        let err = parse(
            &event(
                "meterline.documents.upserted.v1",
                json!({"tenantId": Uuid::nil(), "documents": [
                    {"id": Uuid::nil(), "title": "", "docType": "memo", "status": "lost", "tags": ["ok", " "]}
                ]}),
            ),
            now(),
        )
        .unwrap_err();
        assert!(err.contains("data.documents[0].title: must be 1 to 300 characters"), "{err}");
        assert!(err.contains("data.documents[0].status: must be draft, published or archived"), "{err}");
        assert!(err.contains("data.documents[0].tags[1]"), "{err}");
        let typo = parse(&event("meterline.plan.changed.v1", json!({"tenantId": Uuid::nil(), "plan": "x"})), now());
        assert!(typo.unwrap_err().contains("unknown field `plan`"));
        let astral = "😀".repeat(40);
        let err =
            parse(&event("meterline.plan.changed.v1", json!({"tenantId": Uuid::nil(), "planCode": astral})), now());
        assert!(err.unwrap_err().contains("data.planCode"), "40 emoji are 80 UTF-16 units: too long for NVARCHAR(64)");
        assert_eq!(clip("a😀b", 2), "a", "clipping never splits a surrogate pair");
        let units =
            json!({"tenantId": Uuid::nil(), "meter": "ocr pages", "units": 0, "occurredAt": "2026-11-24T09:00:00Z"});
        let err = parse(&event("meterline.usage.reported.v1", units), now()).unwrap_err();
        assert!(err.contains("data.meter") && err.contains("data.units"), "{err}");
    }

    fn usage_at(occurred_at: &str) -> String {
        let data = json!({"tenantId": Uuid::nil(), "meter": "ocr.pages", "units": 1, "occurredAt": occurred_at});
        event("meterline.usage.reported.v1", data)
    }

    #[test]
    fn timestamps_and_dates_have_four_digit_years() {
        for (text, why) in [
            ("-0001-01-01T00:00:00Z", "has a signed year"),
            ("+10000-01-01T00:00:00Z", "has a signed year"),
            ("+2026-11-24T09:00:00Z", "has a signed year"),
            ("10000-01-01T00:00:00Z", "has a 5-digit year"),
            ("2026-11-30T23:59:60Z", "leap second"),
            ("2026-12-07T10:00:60.5Z", "leap second"),
            ("2026-12-07T10:00:00\u{2212}01:00", "outside ASCII"),
            ("2026-11-24", "is not one"),
            ("26-11-24T09:00:00Z", "is not one"),
        ] {
            let err = parse(&usage_at(text), now()).unwrap_err();
            assert!(err.contains("data.occurredAt: must be an RFC 3339 timestamp with a four-digit year"), "{err}");
            assert!(err.contains(why), "{text}: {err}");
            let mut envelope: Value = serde_json::from_str(&usage_at("2026-11-24T09:00:00Z")).unwrap();
            envelope["time"] = json!(text);
            let err = parse(&envelope.to_string(), now()).unwrap_err();
            assert!(
                err.starts_with("`time` must be an RFC 3339 timestamp with a four-digit year") && err.contains(why),
                "{err}"
            );
        }
        // RFC 3339 itself allows an offset, a space for the `T`, lower case and any number of fractional digits.
        for text in ["2026-11-24T10:00:00+01:00", "2026-11-24 09:00:00Z", "2026-11-24t09:00:00.123456789z"] {
            assert!(parse(&usage_at(text), now()).is_ok(), "{text}");
        }
        for date in ["+10000-01-01", "-0001-01-01", "0000-01-01", "2026-1-01", "02026-01-01", "2026-02-30"] {
            let data = json!({"tenantId": Uuid::nil(), "documents": [
                {"id": Uuid::nil(), "title": "t", "docType": "memo", "status": "draft", "effectiveDate": date}
            ]});
            let err = parse(&event("meterline.documents.upserted.v1", data), now()).unwrap_err();
            assert!(err.contains("data.documents[0].effectiveDate: must be a date YYYY-MM-DD"), "{date}: {err}");
        }
    }

    #[test]
    fn usage_may_lie_at_most_five_minutes_after_the_clock() {
        assert!(parse(&usage_at("2026-11-24T10:05:00Z"), now()).is_ok());
        let err = parse(&usage_at("2026-11-24T10:05:00.000001Z"), now()).unwrap_err();
        assert!(
            err.contains(
                "data.occurredAt: 2026-11-24T10:05:00.000001Z is more than 5 minutes after this consumer's clock \
                 (2026-11-24T10:00:00Z)"
            ),
            "{err}"
        );
        assert!(parse(&usage_at("9999-12-31T23:59:59Z"), now()).unwrap_err().contains("data.occurredAt"));
    }

    #[test]
    fn the_earliest_usage_is_the_start_of_the_period_25_periods_back() {
        assert_eq!(instant(earliest_usage(&BillingCalendar::default(), now())), "2024-10-01T00:00:00Z");
        // Anchor day 28 in Los Angeles: on 5 November the current period began on 28 October, local midnight.
        let calendar = BillingCalendar::new(28, "America/Los_Angeles").unwrap();
        let from = earliest_usage(&calendar, "2026-11-05T12:00:00Z".parse().unwrap());
        assert_eq!(instant(from), "2024-09-28T07:00:00Z");
    }

    #[test]
    fn usage_gets_a_deterministic_event_id_and_its_own_period() {
        let data =
            json!({"tenantId": Uuid::nil(), "meter": "ocr.pages", "units": 7, "occurredAt": "2026-10-31T23:59:59.5Z"});
        let a = parse(&event("meterline.usage.reported.v1", data.clone()), now()).unwrap();
        let b = parse(&event("meterline.usage.reported.v1", data), now()).unwrap();
        let (
            IntegrationEffect::RecordUsage { event: ea, period_start, .. },
            IntegrationEffect::RecordUsage { event: eb, .. },
        ) = (&a.effect, &b.effect)
        else {
            panic!("usage effect")
        };
        assert_eq!(ea.event_id, eb.event_id, "the same (source, id) gives the same usage event id");
        assert_eq!(period_start.to_string(), "2026-10-01", "usage is metered in the period it happened");
        assert_eq!(ea.units, 7);
    }
}
