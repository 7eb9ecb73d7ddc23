//! Typed views of the host's invocation envelope that survive every quirk of the wire format.
//!
//! The host JSON-encodes scalar values a second time (`"\"hello\""`, `"4"`), drops null Metadata keys,
//! writes `DateTime` values without a zone and with seconds precision, may name keys in any case, and
//! copies top-level keys of a JSON message body into Metadata (so Metadata can lie). Everything here is
//! lenient in what it accepts and strict in what it promises: each accessor returns the decoded value or
//! `None`, never a half-decoded string.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{AppError, ErrorCode, serde_json_error};
use crate::jobs::ScheduleStatus;

/// The envelope `{"Data": {...}, "Metadata": {...}}` of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub data: Map<String, Value>,
    pub metadata: Map<String, Value>,
}

impl Invocation {
    /// Parses the raw request body the host sent (compact JSON, usually chunked).
    pub fn parse(body: &[u8]) -> Result<Self, AppError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(AppError::new(ErrorCode::InvalidInvocation).with_detail("the invocation body is empty"));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| serde_json_error(&e))?;
        let Value::Object(top) = value else {
            return Err(
                AppError::new(ErrorCode::InvalidInvocation).with_detail("the invocation body is not a JSON object")
            );
        };
        let mut invocation = Invocation::default();
        for (key, value) in top {
            match (key.to_ascii_lowercase().as_str(), value) {
                ("data", Value::Object(map)) => invocation.data = map,
                ("metadata", Value::Object(map)) => invocation.metadata = map,
                ("data" | "metadata", Value::Null) => {}
                (name @ ("data" | "metadata"), _) => {
                    return Err(
                        AppError::new(ErrorCode::InvalidInvocation).with_detail(format!("`{name}` is not an object"))
                    );
                }
                _ => {}
            }
        }
        Ok(invocation)
    }

    /// The Data entry of a binding (binding names are case-insensitive on the host).
    pub fn data(&self, binding: &str) -> Option<&Value> {
        get_ignore_case(&self.data, binding)
    }

    /// A Metadata entry, case-insensitively, or `None` when absent or null.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        get_ignore_case(&self.metadata, key).filter(|v| !v.is_null())
    }

    /// A Metadata scalar as text, decoding the host's JSON-text encoding (`"\"abc\""` gives `abc`).
    pub fn meta_string(&self, key: &str) -> Option<String> {
        self.meta(key).and_then(decode_string)
    }

    /// A Metadata integer, whether sent as a number or as the host's stringified number (`"2"`).
    pub fn meta_i64(&self, key: &str) -> Option<i64> {
        self.meta(key).and_then(decode_i64)
    }

    /// A Metadata date, with or without a zone (zoneless values are UTC, as the host's are).
    pub fn meta_datetime(&self, key: &str) -> Option<DateTime<Utc>> {
        self.meta(key).and_then(decode_datetime)
    }

    /// The `sys` entry the host adds to every invocation.
    pub fn sys(&self) -> SysMetadata {
        let sys = self.meta("sys").and_then(Value::as_object);
        let field = |name: &str| sys.and_then(|m| get_ignore_case(m, name));
        SysMetadata {
            method_name: field("MethodName").and_then(decode_string),
            utc_now: field("UtcNow").and_then(decode_datetime),
            rand_guid: field("RandGuid").and_then(decode_string),
        }
    }
}

/// The `sys` Metadata entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysMetadata {
    pub method_name: Option<String>,
    pub utc_now: Option<DateTime<Utc>>,
    pub rand_guid: Option<String>,
}

fn get_ignore_case<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// Decodes a value the host encoded as JSON text inside a JSON string, once.
///
/// `"\"hello\""` gives the string `hello`; `"4"` gives the number 4; a string that is not JSON text
/// (an older host, or a raw value) is returned unchanged as a string.
pub fn decode_json_text(value: &Value) -> Value {
    match value {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| value.clone()),
        other => other.clone(),
    }
}

/// A scalar as text: decodes the JSON-text encoding once; numbers and booleans are written plainly.
pub fn decode_string(value: &Value) -> Option<String> {
    match decode_json_text(value) {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub fn decode_i64(value: &Value) -> Option<i64> {
    match decode_json_text(value) {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Booleans arrive as JSON booleans, as `"true"`, or (from .NET `ToString`) as `"True"`.
pub fn decode_bool(value: &Value) -> Option<bool> {
    match decode_json_text(value) {
        Value::Bool(b) => Some(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Dates come as RFC 3339 (`...+00:00`, `...Z`, 7 fractional digits) or zoneless (`2025-01-15T10:20:30`),
/// which the host means as UTC. .NET's `DateTime.MinValue` (`0001-01-01T00:00:00`) means "never" and gives `None`.
pub fn decode_datetime(value: &Value) -> Option<DateTime<Utc>> {
    let text = decode_string(value)?;
    let text = text.trim();
    let parsed = DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).ok().or_else(|| {
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%m/%d/%Y %H:%M:%S"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
            .map(|naive| naive.and_utc())
    })?;
    (parsed.format("%Y").to_string() != "0001").then_some(parsed)
}

/// `Data.<trigger>` of an HTTP trigger in default mode (§4.1 of the protocol notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestData {
    pub method: String,
    /// Path and raw query string taken from `Url` (the route prefix included: `/api/...`).
    pub path_and_query: String,
    /// `scheme://authority` of `Url` (the host builds it from the scheme and `Host` it received), when the scheme
    /// is http or https and the authority is a valid URI authority: where the client sent the request.
    pub origin: Option<String>,
    /// Header name and each of its values, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The decoded body; absent when the client's body was chunked (the host drops it).
    pub body: Option<Vec<u8>>,
}

impl HttpRequestData {
    /// Whether `value` has the shape of an HTTP request (an object with `Method` and `Url`).
    pub fn looks_like(value: &Value) -> bool {
        value.as_object().is_some_and(|m| get_ignore_case(m, "Method").is_some() && get_ignore_case(m, "Url").is_some())
    }

    pub fn from_value(value: &Value) -> Result<Self, AppError> {
        let invalid =
            |what: &str| AppError::new(ErrorCode::InvalidInvocation).with_detail(format!("HTTP request data: {what}"));
        let map = value.as_object().ok_or_else(|| invalid("not an object"))?;
        let method = get_ignore_case(map, "Method").and_then(Value::as_str).ok_or_else(|| invalid("missing Method"))?;
        let url = get_ignore_case(map, "Url").and_then(Value::as_str).ok_or_else(|| invalid("missing Url"))?;
        let mut path_and_query = path_and_query_of(url).ok_or_else(|| invalid("Url is not an absolute URL"))?;
        if !path_and_query.contains('?') {
            // Old hosts and some clients give the query only as the `Query` object (or a JSON string of it).
            let query = get_ignore_case(map, "Query").map(decode_json_text);
            if let Some(Value::Object(query)) = query.filter(|q| q.as_object().is_some_and(|q| !q.is_empty())) {
                let pairs: Vec<String> = query
                    .iter()
                    .map(|(k, v)| {
                        format!("{}={}", encode_query_part(k), encode_query_part(&decode_string(v).unwrap_or_default()))
                    })
                    .collect();
                path_and_query = format!("{path_and_query}?{}", pairs.join("&"));
            }
        }
        let mut headers = Vec::new();
        if let Some(Value::Object(raw)) = get_ignore_case(map, "Headers") {
            for (name, values) in raw {
                match values {
                    Value::Array(items) => {
                        headers.extend(items.iter().filter_map(decode_string).map(|v| (name.clone(), v)))
                    }
                    Value::Null => {}
                    single => headers.extend(decode_string(single).map(|v| (name.clone(), v))),
                }
            }
        }
        let content_type = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.to_ascii_lowercase())
            .unwrap_or_default();
        let body = match get_ignore_case(map, "Body") {
            None | Some(Value::Null) => None,
            Some(Value::String(text))
                if content_type.starts_with("application/octet-stream") || content_type.starts_with("multipart/") =>
            {
                use base64::Engine as _;
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|_| invalid("Body is not valid base64"))?,
                )
            }
            Some(Value::String(text)) => Some(text.clone().into_bytes()),
            // Very old hosts sent JSON bodies as objects.
            Some(other) => Some(other.to_string().into_bytes()),
        };
        Ok(HttpRequestData {
            method: method.to_ascii_uppercase(),
            path_and_query,
            origin: origin_of(url),
            headers,
            body,
        })
    }
}

/// Bytes a request target may not carry as they are (RFC 3986 §2, and what `http::Uri` refuses): controls, space,
/// `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}` and every non-ASCII byte. The host can hand over a URL with
/// them decoded (`é`, a quote in a query); they are percent-encoded, as the client's own request had them.
const NOT_IN_A_URI: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

fn path_and_query_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, rest)| rest)?;
    let start = rest.find(['/', '?']).unwrap_or(rest.len());
    let tail = percent_encoding::utf8_percent_encode(&rest[start..], NOT_IN_A_URI).to_string();
    Some(if tail.starts_with('/') { tail } else { format!("/{tail}") })
}

fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = ["http", "https"].into_iter().find(|s| scheme.eq_ignore_ascii_case(s))?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let authority = authority.parse::<actix_web::http::uri::Authority>().ok()?;
    Some(format!("{scheme}://{}", authority.as_str()))
}

fn encode_query_part(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `Data.<trigger>` of a timer trigger: the host's serialized `TimerInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerInfo {
    /// True on a catch-up run after a missed occurrence.
    pub is_past_due: bool,
    /// `None` when the schedule monitor is off (the host sends `ScheduleStatus: null`).
    pub schedule_status: Option<ScheduleStatus>,
}

impl TimerInfo {
    /// Lenient: a missing or malformed timer object is treated as an on-time run with no monitor.
    pub fn from_value(value: Option<&Value>) -> Self {
        let decoded = value.map(decode_json_text);
        let Some(Value::Object(map)) = decoded else { return TimerInfo::default() };
        let is_past_due = get_ignore_case(&map, "IsPastDue").and_then(decode_bool).unwrap_or(false);
        let schedule_status = match get_ignore_case(&map, "ScheduleStatus") {
            Some(Value::Object(status)) => Some(ScheduleStatus {
                last: get_ignore_case(status, "Last").and_then(decode_datetime),
                next: get_ignore_case(status, "Next").and_then(decode_datetime),
                last_updated: get_ignore_case(status, "LastUpdated").and_then(decode_datetime),
            }),
            _ => None,
        };
        TimerInfo { is_past_due, schedule_status }
    }
}

/// One Service Bus message as delivered to a string-typed trigger (extension v5, §8 of the protocol notes).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBusMessage {
    /// The message body as text, decoded from the host's double encoding.
    pub body: String,
    /// `MessageId` from Metadata. Not trustworthy for deduplication: a JSON body key `MessageId` overwrites it.
    pub message_id: Option<String>,
    pub delivery_count: Option<i64>,
    pub sequence_number: Option<i64>,
    pub enqueued_time: Option<DateTime<Utc>>,
    pub content_type: Option<String>,
    pub correlation_id: Option<String>,
    pub subject: Option<String>,
    pub application_properties: BTreeMap<String, Value>,
}

impl ServiceBusMessage {
    pub fn from_invocation(invocation: &Invocation, binding: &str) -> Result<Self, AppError> {
        let body = match invocation.data(binding) {
            // The host writes the string body as JSON text inside the JSON string: decode exactly once more.
            Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                Ok(Value::String(inner)) => inner,
                _ => text.clone(),
            },
            Some(Value::Null) | None => {
                return Err(AppError::new(ErrorCode::InvalidInvocation)
                    .with_detail(format!("Data.{binding} (the message body) is missing")));
            }
            Some(other) => other.to_string(),
        };
        let application_properties = invocation
            .meta("ApplicationProperties")
            .or_else(|| invocation.meta("UserProperties"))
            .map(decode_json_text)
            .and_then(|v| v.as_object().cloned())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        Ok(ServiceBusMessage {
            body,
            message_id: invocation.meta_string("MessageId"),
            delivery_count: invocation.meta_i64("DeliveryCount"),
            sequence_number: invocation.meta_i64("SequenceNumber"),
            enqueued_time: invocation
                .meta_datetime("EnqueuedTime")
                .or_else(|| invocation.meta_datetime("EnqueuedTimeUtc")),
            content_type: invocation.meta_string("ContentType"),
            correlation_id: invocation.meta_string("CorrelationId"),
            subject: invocation.meta_string("Subject").or_else(|| invocation.meta_string("Label")),
            application_properties,
        })
    }
}

/// The answer to every invocation: `{"Outputs": {...}, "Logs": [...], "ReturnValue": null}`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvocationResult {
    pub outputs: Map<String, Value>,
    pub logs: Vec<String>,
    pub return_value: Value,
}

impl InvocationResult {
    /// Adds a line to the host's log. Control characters (a newline a sender put in an event's id) are written
    /// escaped (`\n`), so one entry is one line and cannot forge others.
    pub fn with_log(mut self, line: impl Into<String>) -> Self {
        let line: String = line.into();
        let line = if line.chars().any(char::is_control) {
            let mut escaped = String::with_capacity(line.len() + 8);
            for c in line.chars() {
                if c.is_control() {
                    escaped.extend(c.escape_default());
                } else {
                    escaped.push(c);
                }
            }
            escaped
        } else {
            line
        };
        self.logs.push(line);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_log_line_stays_one_line() {
        let result = InvocationResult::default().with_log("applied order-1\nERROR forged\r\u{1b}[31m");
        assert_eq!(result.logs, ["applied order-1\\nERROR forged\\r\\u{1b}[31m"]);
        assert_eq!(InvocationResult::default().with_log("plain é").logs, ["plain é"]);
    }

    #[test]
    fn scalars_are_decoded_once() {
        assert_eq!(decode_string(&json!("\"hello\"")), Some("hello".into()));
        assert_eq!(decode_string(&json!("hello")), Some("hello".into()), "tolerates a value encoded only once");
        assert_eq!(decode_string(&json!("\"\\\"quoted\\\"\"")), Some("\"quoted\"".into()), "never decodes twice");
        assert_eq!(decode_i64(&json!("2")), Some(2));
        assert_eq!(decode_i64(&json!(2)), Some(2));
        assert_eq!(decode_i64(&json!("\"17\"")), Some(17), "promoted body values are strings of strings");
        assert_eq!(decode_bool(&json!("True")), Some(true));
        assert_eq!(decode_bool(&json!("\"True\"")), Some(true));
        assert_eq!(decode_bool(&json!(false)), Some(false));
    }

    #[test]
    fn dates_with_and_without_zones_are_utc() {
        let expect = "2025-01-15T10:20:30+00:00";
        for raw in
            ["2025-01-15T10:20:30", "2025-01-15T10:20:30+00:00", "2025-01-15T10:20:30Z", "\"2025-01-15T10:20:30\""]
        {
            assert_eq!(decode_datetime(&json!(raw)).unwrap().to_rfc3339(), expect, "{raw}");
        }
        assert_eq!(
            decode_datetime(&json!("2025-01-15T12:20:30.0032117+02:00")).unwrap().to_rfc3339(),
            "2025-01-15T10:20:30.003211700+00:00"
        );
        assert_eq!(decode_datetime(&json!("0001-01-01T00:00:00")), None);
        assert_eq!(decode_datetime(&json!("0001-01-01T00:00:00+00:00")), None);
        assert_eq!(decode_datetime(&json!("soon")), None);
    }

    #[test]
    fn envelope_keys_are_case_insensitive_and_metadata_nulls_are_absent() {
        let inv = Invocation::parse(br#"{"data":{"Timer":{}},"METADATA":{"DeliveryCount":"3","x":null}}"#).unwrap();
        assert!(inv.data("timer").is_some());
        assert_eq!(inv.meta_i64("deliverycount"), Some(3));
        assert!(inv.meta("x").is_none());
        assert!(Invocation::parse(b"").is_err());
        assert!(Invocation::parse(b"[1]").is_err());
        assert_eq!(Invocation::parse(b"{\"Data\":").unwrap_err().code(), ErrorCode::MalformedJson);
    }

    #[test]
    fn timer_info_handles_missing_monitor_and_first_run() {
        let t = TimerInfo::from_value(Some(
            &json!({"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":true}),
        ));
        assert_eq!(t, TimerInfo { is_past_due: true, schedule_status: None });
        let t = TimerInfo::from_value(Some(&json!({
            "ScheduleStatus": {"Last":"0001-01-01T00:00:00+00:00","Next":"2025-01-15T10:20:00+00:00","LastUpdated":"0001-01-01T00:00:00"},
            "IsPastDue": false
        })));
        let status = t.schedule_status.unwrap();
        assert_eq!(status.last, None);
        assert_eq!(status.next.unwrap().to_rfc3339(), "2025-01-15T10:20:00+00:00");
        assert_eq!(TimerInfo::from_value(None), TimerInfo::default());
    }

    #[test]
    fn service_bus_body_is_decoded_from_double_encoding() {
        let inv = Invocation::parse(
            br#"{"Data":{"message":"\"{\\\"orderId\\\":42}\""},"Metadata":{"DeliveryCount":"2","MessageId":"\"b3c1f0aa\"",
               "EnqueuedTimeUtc":"2025-01-15T10:20:30","ApplicationProperties":{"tenant":"acme","priority":5},"orderId":"\"42\""}}"#,
        )
        .unwrap();
        let m = ServiceBusMessage::from_invocation(&inv, "message").unwrap();
        assert_eq!(m.body, r#"{"orderId":42}"#);
        assert_eq!(m.delivery_count, Some(2));
        assert_eq!(m.message_id.as_deref(), Some("b3c1f0aa"));
        assert_eq!(m.enqueued_time.unwrap().to_rfc3339(), "2025-01-15T10:20:30+00:00");
        assert_eq!(m.application_properties["priority"], json!(5));
        let plain = Invocation::parse(br#"{"Data":{"message":"\"hello\""}}"#).unwrap();
        assert_eq!(ServiceBusMessage::from_invocation(&plain, "message").unwrap().body, "hello");
        let missing = Invocation::parse(br#"{"Data":{}}"#).unwrap();
        assert_eq!(
            ServiceBusMessage::from_invocation(&missing, "message").unwrap_err().code(),
            ErrorCode::InvalidInvocation
        );
    }

    #[test]
    fn http_request_data_takes_path_query_headers_and_body() {
        let req = HttpRequestData::from_value(&json!({
            "Url": "https://app.azurewebsites.net/api/orders/42?expand=items&tag=a&tag=b",
            "Method": "post",
            "Query": {"expand":"items","tag":"a,b"},
            "Headers": {"Content-Type":["application/json"],"x-custom":["v1","v2"]},
            "Params": {"id":"42"},
            "Identities": [],
            "Body": "{\"qty\":2}"
        }))
        .unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path_and_query, "/api/orders/42?expand=items&tag=a&tag=b");
        assert_eq!(req.origin.as_deref(), Some("https://app.azurewebsites.net"));
        assert_eq!(req.headers.iter().filter(|(n, _)| n == "x-custom").count(), 2);
        assert_eq!(req.body.as_deref(), Some(&b"{\"qty\":2}"[..]));

        let binary = HttpRequestData::from_value(&json!({
            "Url": "http://h/api/x", "Method": "PUT", "Headers": {"Content-Type":["application/octet-stream"]}, "Body": "AAEC"
        }))
        .unwrap();
        assert_eq!(binary.body, Some(vec![0, 1, 2]));

        let old = HttpRequestData::from_value(
            &json!({"Url": "http://h/api/x", "Method": "GET", "Query": "{\"a b\":\"1&2\"}"}),
        )
        .unwrap();
        assert_eq!(old.path_and_query, "/api/x?a%20b=1%262");
        // Characters a URI cannot carry as they are, handed over decoded, arrive encoded (and so parse).
        let raw = serde_json::json!({"Url": "http://app/api/v1/documents/é?q=a\"b <c>", "Method": "GET"});
        let decoded = HttpRequestData::from_value(&raw).unwrap();
        assert_eq!(decoded.path_and_query, "/api/v1/documents/%C3%A9?q=a%22b%20%3Cc%3E");
        assert!(decoded.path_and_query.parse::<actix_web::http::Uri>().is_ok());
        assert!(old.body.is_none());
        assert_eq!(old.origin.as_deref(), Some("http://h"));
        for (url, origin) in [
            ("HTTPS://Meterline.example:8443/api/x", Some("https://Meterline.example:8443")),
            ("ftp://h/api/x", None),
            ("https://a b/api/x", None),
            ("https:///api/x", None),
        ] {
            let parsed = HttpRequestData::from_value(&json!({"Url": url, "Method": "GET"})).unwrap();
            assert_eq!(parsed.origin.as_deref(), origin, "{url}");
        }
        assert!(HttpRequestData::from_value(&json!({"Url": "/relative", "Method": "GET"})).is_err());
    }
}
