//! Every operation's contract, read from the OpenAPI document: the statuses it can answer and the checks its query string and body pass before its handler runs.
//!
//! **Statuses, in one place.** [`declare_statuses`] adds to every `/api/v1` operation the problem responses the
//! pipeline and its parameters can produce: 401 and 403 (authentication and the permission), 429 (every
//! operation is rate-limited and metered, with `Retry-After`, `RateLimit` and `RateLimit-Policy`), 503 (store,
//! usage record, identity provider), 422 (every operation refuses unknown or invalid query parameters), and by
//! what the operation takes: a body (400, 413, 415), a path parameter (404), `If-Match` (412, 428). A handler
//! declares only what is its own (a 404 on a query parameter, 409, 304). In debug builds `api::gate::conformance`
//! turns an answer with a status its operation does not declare into a 500, so every test that drives the API
//! checks the declarations.
//!
//! **Requests, checked against the same document.** [`Contracts::check_request`] (run by `api::gate::check`
//! once the caller is known to hold the operation's permission) refuses, before the handler runs: a query
//! parameter the operation does not take, or one whose value does not fit its schema (422, one entry per
//! parameter); a body of another media type (415), over the size limit (413), that is not JSON (400), or that
//! does not fit the operation's schema (422, one entry per failure with its JSON Pointer). The schema is the
//! document's own (`jsonschema`, draft 2020-12), so what the document says is what the API accepts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix_web::dev::ServiceRequest;
use actix_web::http::header;
use serde_json::{Value, json};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{OpenApi, RefOr};

use crate::error::{AppError, ErrorCode, FieldError, PROBLEM_JSON};

/// Most failures one problem lists; a hostile body could otherwise fail thousands of items.
const MAX_FIELD_ERRORS: usize = 50;

/// The shared problem responses, as `#/components/responses/<name>`: (status, name, description).
const PROBLEM_RESPONSES: &[(u16, &str, &str)] = &[
    (400, "MalformedRequest", "The body is not well-formed JSON (`malformed-json`)."),
    (
        401,
        "Unauthenticated",
        "No bearer token (`unauthenticated`, with a `WWW-Authenticate: Bearer` challenge) or an invalid one \
         (`invalid-token`).",
    ),
    (
        403,
        "Forbidden",
        "The token lacks the operation's permission (`insufficient-scope`, see `x-meterline-permission`), or its \
         caller maps to no tenant (`unknown-tenant`), a suspended tenant (`tenant-suspended`) or a revoked client \
         (`client-revoked`).",
    ),
    (404, "NotFound", "No such resource in the caller's tenant (`not-found`)."),
    (412, "PreconditionFailed", "The ETag in `If-Match` is not the current one (`precondition-failed`)."),
    (
        408,
        "RequestTimeout",
        "The body stopped arriving for 10 s, or did not arrive whole within 60 s (`request-timeout`).",
    ),
    (413, "PayloadTooLarge", "The body is larger than the limit (`payload-too-large`)."),
    (415, "UnsupportedMediaType", "The body is not of the media type the operation takes (`unsupported-media-type`)."),
    (
        422,
        "ValidationFailed",
        "A query parameter the operation does not take, or a parameter or body field that does not fit its schema \
         or its rules (`validation-failed`; `errors` lists each, with `pointer` for body fields and `parameter` \
         for query parameters).",
    ),
    (428, "PreconditionRequired", "`If-Match` is missing (`precondition-required`)."),
    (
        429,
        "TooManyRequests",
        "The client's rate limit (`rate-limited`) or the tenant's quota (`quota-exceeded`) refuses the call; \
         `Retry-After` says when to try again.",
    ),
    (
        503,
        "ServiceUnavailable",
        "The store (`store-unavailable`), the usage record (`usage-not-recorded`) or the identity provider \
         (`identity-provider-unavailable`) is unavailable, a dependency's circuit breaker is open \
         (`dependency-unavailable`), or too much work waits for the store (`overloaded`); retry after `Retry-After`.",
    ),
];

/// The headers a 429 carries (draft-ietf-httpapi-ratelimit-headers and RFC 9110).
const RATE_LIMIT_HEADERS: &[(&str, &str, &str)] = &[
    ("Retry-After", "integer", "Seconds until the call may succeed."),
    (
        "RateLimit",
        "string",
        "The remaining quota units of each policy, e.g. `\"minute\";r=0;t=3, \"month\";r=950;t=86400`.",
    ),
    ("RateLimit-Policy", "string", "The policies in force, e.g. `\"minute\";q=60;w=60, \"month\";q=1000;w=2592000`."),
];

fn methods(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
        .into_iter()
        .flatten()
}

/// Answers that lead to a read of the same resource: (operation, status, read, path parameter, where its value
/// is in the answer).
const FOLLOWS: &[(&str, &str, &str, &str, &str)] = &[
    ("createDocument", "201", "getDocument", "id", "$response.body#/id"),
    ("createTenant", "201", "getTenant", "id", "$response.body#/id"),
    ("createPlan", "201", "getPlan", "code", "$response.body#/code"),
    ("getPlan", "200", "getPlanCosts", "code", "$request.path.code"),
    ("registerClient", "201", "getClient", "id", "$response.body#/id"),
    ("registerClient", "202", "getClient", "id", "$response.body#/id"),
];

/// Reads whose `ETag` a conditional write sends back as `If-Match`: (read, path parameters, writes).
const CONDITIONAL_WRITES: &[(&str, &[&str], &[&str])] = &[
    ("getDocument", &["id"], &["replaceDocument", "patchDocument", "deleteDocument"]),
    ("getTenant", &["id"], &["patchTenant", "suspendTenant", "reactivateTenant"]),
    ("getPlan", &["code"], &["replacePlan"]),
    ("getPlanCosts", &["code"], &["replacePlanCosts"]),
    ("getClient", &["id"], &["revokeClient", "setClientLimits"]),
    ("getTenantClient", &["tenantId", "id"], &["approveClient", "rejectClient"]),
    ("getGrant", &["tenantId", "id"], &["revokeGrant"]),
];

/// OpenAPI links (3.0 §4.8.20) from an answer to the operations a client goes on with ([`FOLLOWS`]), and from a
/// read to its conditional writes with the `If-Match` they need ([`CONDITIONAL_WRITES`]). Generators and
/// schemathesis's stateful phase follow them, so conditional writes are tried with a current ETag too. Each
/// link is named after the operation it leads to.
fn declare_links(doc: &mut OpenApi) {
    for (from, status, to, parameter, value) in FOLLOWS {
        link(doc, from, status, to, &[(parameter, value)]);
    }
    for (read, path, writes) in CONDITIONAL_WRITES {
        let ids: Vec<String> = path.iter().map(|parameter| format!("$request.path.{parameter}")).collect();
        let mut parameters: Vec<(&str, &str)> = path.iter().copied().zip(ids.iter().map(String::as_str)).collect();
        parameters.push(("header.If-Match", "$response.header.ETag"));
        for write in *writes {
            link(doc, read, "200", write, &parameters);
        }
    }
}

/// Adds a link named `to` to the `status` answer of `from`.
fn link(doc: &mut OpenApi, from: &str, status: &str, to: &str, parameters: &[(&str, &str)]) {
    use utoipa::openapi::link::LinkBuilder;
    let exists = doc.paths.paths.values_mut().flat_map(methods).any(|op| op.operation_id.as_deref() == Some(to));
    assert!(exists, "a link names {to}, which is not an operation");
    let response = doc.paths.paths.values_mut().flat_map(methods).find(|op| op.operation_id.as_deref() == Some(from));
    let Some(RefOr::T(response)) = response.and_then(|op| op.responses.responses.get_mut(status)) else {
        panic!("a link starts at {from} {status}, which the document does not have");
    };
    let link = parameters.iter().fold(LinkBuilder::new().operation_id(to), |link, (parameter, expression)| {
        link.parameter(*parameter, *expression)
    });
    response.links.insert(to.to_owned(), RefOr::T(link.build()));
}

/// The problem statuses the pipeline and the operation's parameters can answer (see the module docs).
fn derived_statuses(op: &Operation) -> Vec<u16> {
    let mut statuses = vec![401, 403, 422, 429, 503];
    if op.request_body.is_some() {
        statuses.extend([400, 408, 413, 415]);
    }
    let parameters = op.parameters.iter().flatten().filter_map(|p| match p {
        RefOr::T(parameter) => Some(parameter),
        RefOr::Ref(_) => None,
    });
    for parameter in parameters {
        match parameter.parameter_in {
            ParameterIn::Path => statuses.push(404),
            ParameterIn::Header if parameter.name.eq_ignore_ascii_case("if-match") => statuses.extend([412, 428]),
            _ => {}
        }
    }
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

/// Adds the shared problem responses to the components and each `/api/v1` operation's derived statuses to its
/// responses (a status the handler declares itself keeps the handler's description), and the links ([`declare_links`]).
pub fn declare_statuses(doc: &mut OpenApi) {
    declare_links(doc);
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::{Content, Ref, Type};

    let components = doc.components.get_or_insert_with(Default::default);
    for (status, name, description) in PROBLEM_RESPONSES {
        let mut response = ResponseBuilder::new()
            .description(*description)
            .content(PROBLEM_JSON, Content::new(Some(Ref::from_schema_name("Problem"))))
            // For a client whose Accept names application/json and not problem+json (Azure SDK clients).
            .content("application/json", Content::new(Some(Ref::from_schema_name("AzureErrorResponse"))));
        for (name, about) in problem_header_fields(*status) {
            response = response.header(name, text_header(about));
        }
        if *status == 429 || *status == 503 {
            for (header, kind, about) in
                RATE_LIMIT_HEADERS.iter().filter(|(h, ..)| *status == 429 || *h == "Retry-After")
            {
                let kind = if *kind == "integer" { Type::Integer } else { Type::String };
                let schema = utoipa::openapi::ObjectBuilder::new().schema_type(kind);
                response = response
                    .header(*header, HeaderBuilder::new().schema(Some(schema)).description(Some(*about)).build());
            }
        }
        components.responses.insert((*name).to_owned(), RefOr::T(response.build()));
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for op in methods(item) {
            // A handler's own error responses: the Azure envelope too, for the clients that ask for it, and the
            // header fields every problem carries (as the shared responses declare them).
            for (status, response) in op.responses.responses.iter_mut() {
                if let RefOr::T(response) = response
                    && (status.starts_with('4') || status.starts_with('5'))
                    && response.content.contains_key(PROBLEM_JSON)
                {
                    response
                        .content
                        .entry("application/json".to_owned())
                        .or_insert_with(|| RefOr::T(Content::new(Some(Ref::from_schema_name("AzureErrorResponse")))));
                    for (name, about) in problem_header_fields(status.parse().unwrap_or_default()) {
                        response.headers.entry(name.to_owned()).or_insert_with(|| RefOr::T(text_header(about)));
                    }
                }
            }
            declare_success_headers(op);
            for status in derived_statuses(op) {
                let name = PROBLEM_RESPONSES.iter().find(|(s, ..)| *s == status).map(|(_, name, _)| *name);
                let name = name.expect("every derived status has a shared response");
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
            }
        }
    }
}

/// The header fields a problem answer of `status` carries, each with what it says: the request id and the code on
/// every one, the bearer challenge on a 401 and a 403, the current ETag on a 412.
fn problem_header_fields(status: u16) -> impl Iterator<Item = (&'static str, &'static str)> {
    let specific = match status {
        401 => Some(("WWW-Authenticate", "The bearer challenge (RFC 6750 §3).")),
        403 => Some((
            "WWW-Authenticate",
            "The bearer challenge with `error=\"insufficient_scope\"` (RFC 6750 §3.1): the token lacks the permission.",
        )),
        412 => Some(("ETag", "The current ETag, to read again and retry with.")),
        _ => None,
    };
    [
        ("x-request-id", "The request's id, as `requestId` in the body; quote it when asking for help."),
        ("x-ms-error-code", "The problem's `code` (Azure REST API guidelines)."),
    ]
    .into_iter()
    .chain(specific)
}

/// A string header field an answer carries, described by `about`.
pub fn text_header(about: &str) -> utoipa::openapi::Header {
    utoipa::openapi::header::HeaderBuilder::new()
        .schema(Some(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String)))
        .description(Some(about))
        .build()
}

/// The views a single resource is answered with, each with its `ETag` header (the version it shows).
const VIEWS_WITH_ETAG: &[&str] = &["DocumentView", "TenantView", "PlanView", "PlanCosts", "ClientView", "GrantView"];

/// The header fields of an operation's successful answers, so a generated client can read them: `RateLimit` and
/// `RateLimit-Policy` (on every answer of a caller with a tenant; not required, a platform administrator without
/// one is not limited), `Location` on a 201, and `ETag` where a single resource's view is the body.
fn declare_success_headers(op: &mut utoipa::openapi::path::Operation) {
    let text = |about: &str| RefOr::T(text_header(about));
    let takes_idempotency_key = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p, RefOr::T(p) if p.name.eq_ignore_ascii_case("Idempotency-Key")));
    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        if status == "304" {
            response.headers.entry("ETag".to_owned()).or_insert_with(|| text("The current ETag (unchanged)."));
        }
        if !status.starts_with('2') && status != "304" {
            continue;
        }
        response
            .headers
            .entry("x-request-id".to_owned())
            .or_insert_with(|| text("The request's id; quote it when asking for help."));
        if !status.starts_with('2') {
            continue;
        }
        for (header, _, about) in RATE_LIMIT_HEADERS.iter().filter(|(h, ..)| *h != "Retry-After") {
            response.headers.entry((*header).to_owned()).or_insert_with(|| text(about));
        }
        if status == "201" || status == "202" {
            response.headers.entry("Location".to_owned()).or_insert_with(|| text("The created resource's path."));
            if takes_idempotency_key {
                response.headers.entry("Idempotency-Replayed".to_owned()).or_insert_with(|| {
                    text("`true` when this is the stored answer of an earlier request with the same Idempotency-Key.")
                });
            }
        }
        let view = match response.content.get("application/json") {
            Some(RefOr::T(content)) => match &content.schema {
                Some(RefOr::Ref(r)) => r.ref_location.rsplit('/').next(),
                _ => None,
            },
            _ => None,
        };
        if view.is_some_and(|v| VIEWS_WITH_ETAG.contains(&v)) {
            response
                .headers
                .entry("ETag".to_owned())
                .or_insert_with(|| text("The strong ETag of the version shown, for If-Match and If-None-Match."));
        }
    }
}

/// How a query parameter's text becomes the JSON value its schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Number,
    Boolean,
    /// Repeated (`tag=a&tag=b`) or comma-separated (`tag=a,b`): the Functions host joins repeated keys with
    /// commas when it forwards a request, so both forms mean the same.
    List,
}

struct QueryContract {
    kinds: BTreeMap<String, Kind>,
    /// Whether a parameter is required: only then can an empty query string fail.
    any_required: bool,
    validator: LazyValidator,
}

struct BodyContract {
    media_types: Vec<String>,
    required: bool,
    validator: LazyValidator,
}

/// A validator compiled on its operation's first use, so a start (a cold start under the Functions host) does not
/// compile 80-odd schemas for operations it may never serve. Debug builds (every test) compile them all at
/// startup, so a schema that does not compile fails the tests, never a request.
struct LazyValidator {
    schema: Value,
    compiled: std::sync::OnceLock<jsonschema::Validator>,
}

impl LazyValidator {
    fn new(schema: Value) -> anyhow::Result<Self> {
        let lazy = LazyValidator { schema, compiled: std::sync::OnceLock::new() };
        if cfg!(debug_assertions) {
            let compiled = validator(&lazy.schema)?;
            let _ = lazy.compiled.set(compiled);
        }
        Ok(lazy)
    }

    fn get(&self) -> &jsonschema::Validator {
        self.compiled
            .get_or_init(|| validator(&self.schema).expect("every schema compiles (debug builds check them all)"))
    }
}

struct OperationContract {
    permission: String,
    statuses: Vec<u16>,
    query: QueryContract,
    body: Option<BodyContract>,
}

/// The contracts of every operation, by operation id.
pub struct Contracts {
    operations: HashMap<Arc<str>, OperationContract>,
    max_body: usize,
}

impl std::fmt::Debug for Contracts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contracts").field("operations", &self.operations.len()).finish()
    }
}

/// A schema that resolves the document's `#/components/schemas/...` references: the schemas it reaches ride
/// along under the same pointer. Only those: every operation's validators keep their root document, so carrying
/// all of the document's schemas in each would grow memory with operations times schemas.
fn rooted(schema: Value, schemas: &Value) -> Value {
    let mut reached = serde_json::Map::new();
    let mut pending = vec![schema.clone()];
    while let Some(next) = pending.pop() {
        for name in references(&next) {
            if !reached.contains_key(&name)
                && let Some(target) = schemas.get(&name)
            {
                reached.insert(name, target.clone());
                pending.push(target.clone());
            }
        }
    }
    let mut root = match schema {
        Value::Object(map) => map,
        other => return other,
    };
    if !reached.is_empty() {
        root.insert("components".into(), json!({ "schemas": reached }));
    }
    Value::Object(root)
}

/// The component schema names `value` refers to (`{"$ref": "#/components/schemas/Name"}`), at any depth.
fn references(value: &Value) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(name) =
                    map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"))
                {
                    names.push(name.to_owned());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    names
}

fn validator(schema: &Value) -> anyhow::Result<jsonschema::Validator> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| anyhow::anyhow!("an OpenAPI schema does not compile: {e}"))
}

/// The parameter's kind, following a `$ref` into the components.
fn kind_of(schema: &Value, schemas: &Value) -> Kind {
    let schema = match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => schemas.get(name).unwrap_or(&Value::Null),
        None => schema,
    };
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    match types.into_iter().find(|t| *t != "null") {
        Some("integer") => Kind::Integer,
        Some("number") => Kind::Number,
        Some("boolean") => Kind::Boolean,
        Some("array") => Kind::List,
        _ => Kind::Text,
    }
}

impl Contracts {
    /// Reads every operation's contract from the document `routes::openapi` generates.
    pub fn from_openapi(doc: &OpenApi, max_body: usize) -> anyhow::Result<Self> {
        let doc = serde_json::to_value(doc)?;
        let schemas = doc.pointer("/components/schemas").cloned().unwrap_or_else(|| json!({}));
        let mut operations = HashMap::new();
        for item in doc["paths"].as_object().into_iter().flat_map(|paths| paths.values()) {
            for op in item.as_object().into_iter().flat_map(|ops| ops.values()) {
                let Some(id) = op.get("operationId").and_then(Value::as_str) else { continue };
                let mut kinds = BTreeMap::new();
                let (mut properties, mut required) = (serde_json::Map::new(), Vec::new());
                for parameter in op["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] != "query" {
                        continue;
                    }
                    let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                    let schema = parameter.get("schema").cloned().unwrap_or_else(|| json!({}));
                    kinds.insert(name.clone(), kind_of(&schema, &schemas));
                    if parameter["required"] == true {
                        required.push(Value::String(name.clone()));
                    }
                    properties.insert(name, schema);
                }
                let query_schema = json!({
                    "type": "object",
                    "properties": properties,
                    "required": required,
                    "additionalProperties": false,
                });
                let any_required = !required.is_empty();
                let query = QueryContract {
                    kinds,
                    any_required,
                    validator: LazyValidator::new(rooted(query_schema, &schemas))?,
                };
                let body = match op.get("requestBody") {
                    None => None,
                    Some(body) => {
                        let content = body["content"].as_object().cloned().unwrap_or_default();
                        let schema =
                            content.values().find_map(|c| c.get("schema").cloned()).unwrap_or_else(|| json!({}));
                        Some(BodyContract {
                            media_types: content.keys().map(|m| m.to_ascii_lowercase()).collect(),
                            required: body["required"] == true,
                            validator: LazyValidator::new(rooted(schema, &schemas))?,
                        })
                    }
                };
                let mut statuses: Vec<u16> = op["responses"]
                    .as_object()
                    .into_iter()
                    .flat_map(|r| r.keys())
                    .filter_map(|status| status.parse().ok())
                    .collect();
                statuses.sort_unstable();
                let permission = op["x-meterline-permission"].as_str().unwrap_or("anonymous").to_owned();
                operations.insert(Arc::from(id), OperationContract { permission, statuses, query, body });
            }
        }
        Ok(Contracts { operations, max_body })
    }

    /// Checks the request's query string and body against `operation`'s contract (see the module docs); the
    /// body, once read, is put back for the handler. An operation it does not know passes.
    pub async fn check_request(&self, operation: &str, req: &mut ServiceRequest) -> Result<(), AppError> {
        match self.operations.get(operation) {
            Some(contract) => checked(self, contract, req).await,
            None => Ok(()),
        }
    }

    /// The permission the operation's `x-meterline-permission` names (`anonymous` and `authenticated` too).
    pub fn permission(&self, operation: &str) -> Option<&str> {
        self.operations.get(operation).map(|op| op.permission.as_str())
    }

    /// Whether `operation` declares `status` in the document.
    pub fn declares(&self, operation: &str, status: u16) -> bool {
        self.operations.get(operation).is_none_or(|op| op.statuses.contains(&status))
    }

    /// The failures of `query` against `operation`'s parameters (none for an operation it does not know).
    pub fn query_failures(&self, operation: &str, query: &str) -> Vec<FieldError> {
        self.operations.get(operation).map(|op| self.check_query(&op.query, query)).unwrap_or_default()
    }

    /// The failures of `body` against `operation`'s body schema (none without one).
    pub fn body_failures(&self, operation: &str, body: &Value) -> Vec<FieldError> {
        let body_contract = self.operations.get(operation).and_then(|op| op.body.as_ref());
        body_contract.map(|contract| body_failures(contract.validator.get(), body)).unwrap_or_default()
    }

    /// The query string's failures against the operation's parameters: unknown names, repeated single values,
    /// values that do not fit their schemas.
    fn check_query(&self, contract: &QueryContract, query: &str) -> Vec<FieldError> {
        // Most calls send no query string: nothing to check unless a parameter is required.
        if query.is_empty() && !contract.any_required {
            return Vec::new();
        }
        let mut errors = not_utf8(query);
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            values.entry(name.into_owned()).or_default().push(value.into_owned());
        }
        let mut instance = serde_json::Map::new();
        // A parameter given twice is reported as that, not also as missing.
        let mut repeated = std::collections::BTreeSet::new();
        for (name, texts) in values {
            let Some(kind) = contract.kinds.get(&name) else {
                let known: Vec<&str> = contract.kinds.keys().map(String::as_str).collect();
                let takes = if known.is_empty() { "no query parameters".to_owned() } else { known.join(", ") };
                errors.push(
                    FieldError::new(&name, "unknown", format!("not a parameter of this operation; it takes {takes}"))
                        .in_query(&name),
                );
                continue;
            };
            let value = match kind {
                Kind::List => {
                    Value::Array(texts.iter().flat_map(|t| t.split(',')).map(|t| Value::String(t.to_owned())).collect())
                }
                _ if texts.len() > 1 => {
                    errors.push(FieldError::new(&name, "repeated", "give this parameter once").in_query(&name));
                    repeated.insert(name);
                    continue;
                }
                kind => typed(*kind, texts.into_iter().next().unwrap_or_default()),
            };
            instance.insert(name, value);
        }
        let instance = Value::Object(instance);
        for failure in contract.validator.get().iter_errors(&instance).take(MAX_FIELD_ERRORS) {
            let pointer = failure.instance_path().to_string();
            let name = match failure.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    let name = property.as_str().unwrap_or_default().to_owned();
                    if repeated.contains(&name) {
                        continue;
                    }
                    name
                }
                _ => pointer.trim_start_matches('/').split('/').next().unwrap_or_default().to_owned(),
            };
            let mut error = FieldError::new(&name, failure.kind().keyword(), said(&failure)).in_query(&name);
            if name == "q" && failure.kind().keyword() == "pattern" {
                // A search of spaces only: where the search parser would have said it, at its start.
                error = error.at(1);
            }
            errors.push(error);
        }
        errors.truncate(MAX_FIELD_ERRORS);
        errors
    }
}

/// A query value as its schema's type, when it reads as one; else the text, which the schema then refuses.
fn typed(kind: Kind, text: String) -> Value {
    match kind {
        Kind::Integer => text.parse::<i64>().map(Value::from).unwrap_or(Value::String(text)),
        Kind::Number => match text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(text),
        },
        Kind::Boolean => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text),
        },
        Kind::Text | Kind::List => Value::String(text),
    }
}

/// The body's failures against its schema, one per failing location, each with its JSON Pointer.
fn body_failures(validator: &jsonschema::Validator, body: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for failure in validator.iter_errors(body).take(MAX_FIELD_ERRORS) {
        describe(&failure, &mut errors);
    }
    errors.truncate(MAX_FIELD_ERRORS);
    errors
}

/// One schema failure as field errors. A `oneOf`/`anyOf` of alternatives (how an optional field's
/// `Option<T>` is written: `T` or `null`) reports why the value fails the alternative it was meant for: the
/// one that failed on more than its type.
fn describe(failure: &jsonschema::ValidationError<'_>, errors: &mut Vec<FieldError>) {
    use jsonschema::error::ValidationErrorKind as K;
    let at = failure.instance_path().to_string();
    let code = failure.kind().keyword().to_owned();
    match failure.kind() {
        // Reported on the object; the pointer names the missing member.
        K::Required { property } => {
            let pointer = format!("{at}/{}", escape(property.as_str().unwrap_or_default()));
            errors.push(FieldError::body(&pointer, code, "required, and missing"));
        }
        K::AdditionalProperties { unexpected } => {
            for name in unexpected {
                let pointer = format!("{at}/{}", escape(name));
                errors.push(FieldError::body(&pointer, "unknown", "not a member of this object"));
            }
        }
        // A member whose name the object does not allow: the pointer names the member.
        K::PropertyNames { error } => {
            let name = error.instance().as_str().unwrap_or_default().to_owned();
            let pointer = format!("{at}/{}", escape(&name));
            errors.push(FieldError::body(&pointer, "unknown", "not a name this object allows"));
        }
        K::OneOfNotValid { context } | K::AnyOf { context } => {
            let meant = context.iter().find(|branch| branch.iter().any(|e| e.kind().keyword() != "type"));
            match meant {
                Some(branch) => branch.iter().for_each(|e| describe(e, errors)),
                None => errors.push(FieldError::body(&at, "type", "not of a type this field takes")),
            }
        }
        _ => errors.push(FieldError::body(&at, code, said(failure))),
    }
}

/// A failure in words: the schema's own wording, except for the patterns a reader should not have to decode.
fn said(failure: &jsonschema::ValidationError<'_>) -> String {
    match failure.kind() {
        jsonschema::error::ValidationErrorKind::Pattern { pattern } if pattern == r"\S" => {
            "must hold a character other than spaces".to_owned()
        }
        _ => failure.masked().to_string(),
    }
}

/// A member name as a JSON Pointer reference token (RFC 6901).
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// The media type of the request, lower-case, without parameters.
fn media_type(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// The parameters whose name or value percent-decodes to bytes that are not UTF-8 (`q=%C3customs`): one failure
/// each, where a lossy decoding would have searched, filtered or paged by other text than the client sent.
fn not_utf8(query: &str) -> Vec<FieldError> {
    // Without a percent sign every byte is the query's own, which is text already.
    if !query.contains('%') {
        return Vec::new();
    }
    let decodes = |part: &str| percent_encoding::percent_decode_str(part).decode_utf8().is_ok();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (!decodes(name) || !decodes(value)).then(|| {
                // A name that is not UTF-8 itself is named as it was sent, percent-encoded.
                let shown = match percent_encoding::percent_decode_str(name).decode_utf8() {
                    Ok(decoded) => decoded.into_owned(),
                    Err(_) => name.to_owned(),
                };
                FieldError::new(&shown, "encoding", "its percent-encoded bytes are not UTF-8 text").in_query(&shown)
            })
        })
        .collect()
}

/// The first `charset` parameter of the body's media type that does not name UTF-8, lower case (a repeated one
/// included: `charset=utf-8; charset=latin1` is not UTF-8 either).
fn charset(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    value.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        (name.trim().eq_ignore_ascii_case("charset") && value != "utf-8" && value != "utf8").then_some(value)
    })
}

/// `Accept-Patch` (RFC 5789 §3.1), which the `http` crate has no constant for.
pub fn accept_patch() -> header::HeaderName {
    header::HeaderName::from_static("accept-patch")
}

/// The request's `Content-Encoding` when it names a coding other than `identity` (every field, each a list).
fn content_coding(req: &ServiceRequest) -> Option<String> {
    let codings: Vec<String> = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .flat_map(|v| v.to_str().unwrap_or("?").split(',').map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

async fn checked(
    contracts: &Contracts,
    contract: &OperationContract,
    req: &mut ServiceRequest,
) -> Result<(), AppError> {
    let mut errors = contracts.check_query(&contract.query, req.query_string());
    let Some(body) = &contract.body else {
        return if errors.is_empty() { Ok(()) } else { Err(invalid(errors)) };
    };
    let declared = content_length(req);
    if declared == Some(0) && !body.required {
        return if errors.is_empty() { Ok(()) } else { Err(invalid(errors)) };
    }
    match media_type(req) {
        Some(media) if body.media_types.contains(&media) => {}
        _ => {
            let err = AppError::new(ErrorCode::UnsupportedMediaType)
                .with_detail(format!("this operation takes a body of type {}", body.media_types.join(" or ")));
            // RFC 5789 §2.2: a PATCH in a format the resource does not take says which it does.
            return Err(match req.method() == actix_web::http::Method::PATCH {
                true => err.with_header(
                    accept_patch(),
                    header::HeaderValue::from_str(&body.media_types.join(", ")).expect("media types are header text"),
                ),
                false => err,
            });
        }
    }
    if let Some(charset) = charset(req) {
        return Err(AppError::new(ErrorCode::UnsupportedMediaType)
            .with_detail(format!("bodies are JSON in UTF-8 (RFC 8259), not {charset}")));
    }
    if let Some(coding) = content_coding(req) {
        // RFC 9110 §8.4 and RFC 7694: a body in a coding the server does not decode is 415, and Accept-Encoding
        // on the answer says which codings it takes.
        return Err(AppError::new(ErrorCode::UnsupportedMediaType)
            .with_detail(format!("bodies are taken without a content coding, not {coding}: send them as they are"))
            .with_header(header::ACCEPT_ENCODING, header::HeaderValue::from_static("identity")));
    }
    let bytes = crate::api::body::read_body(req, contracts.max_body, declared).await?;
    // Its structure first, without building it: a body of more values than any operation takes is refused before
    // it is parsed and explained failure by failure.
    let shape = crate::api::validation::body_shape(&bytes);
    if shape.too_many_values {
        let max = crate::api::validation::MAX_BODY_VALUES;
        errors.push(FieldError::body(
            "",
            "maxValues",
            format!("the body holds more than {max} values (members and items); no operation takes that many"),
        ));
        return Err(invalid(errors));
    }
    let value: Value = if bytes.is_empty() {
        return Err(AppError::new(ErrorCode::MalformedJson).with_detail("the body is empty; this operation takes JSON"));
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            // serde's message ends with its own "at line L column C": said once, in words.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            AppError::new(ErrorCode::MalformedJson).with_detail(format!(
                "the body is not JSON: {message} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?
    };
    if let Some(pointer) = shape.duplicate {
        errors.push(FieldError::body(&pointer, "duplicate", "this member appears more than once in its object"));
    }
    // Valid bodies (nearly all) take the validator's short-circuiting pass; only invalid ones are explained.
    let validator = body.validator.get();
    if !validator.is_valid(&value) {
        errors.extend(body_failures(validator, &value));
    }
    // JSON has one number type: `1082.0` is the integer the schema allowed, but serde refuses it for an `i32`.
    // The handler gets the body as sent, or with such numbers written as integers.
    let bytes = match integral(value) {
        (value, true) => serde_json::to_vec(&value).expect("a parsed body serializes").into(),
        (_, false) => bytes,
    };
    req.set_payload(actix_web::dev::Payload::from(bytes));
    if errors.is_empty() { Ok(()) } else { Err(invalid(errors)) }
}

/// `value` with every float that is a whole number in the `i64` range written as an integer; true if one was.
fn integral(value: Value) -> (Value, bool) {
    match value {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => (Value::from(f as i64), true),
            _ => (Value::Number(n), false),
        },
        Value::Array(items) => {
            let mut changed = false;
            let items = items
                .into_iter()
                .map(|v| {
                    let (v, c) = integral(v);
                    changed |= c;
                    v
                })
                .collect();
            (Value::Array(items), changed)
        }
        Value::Object(members) => {
            let mut changed = false;
            let members = members
                .into_iter()
                .map(|(k, v)| {
                    let (v, c) = integral(v);
                    changed |= c;
                    (k, v)
                })
                .collect();
            (Value::Object(members), changed)
        }
        other => (other, false),
    }
}

fn content_length(req: &ServiceRequest) -> Option<usize> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn invalid(errors: Vec<FieldError>) -> AppError {
    let detail = match errors.len() {
        1 => "1 field or parameter failed validation".to_owned(),
        n => format!("{n} fields or parameters failed validation"),
    };
    AppError::new(ErrorCode::ValidationFailed).with_detail(detail).with_field_errors(errors)
}
