//! Which operation a request is: the route table (every path template, its methods and their operation ids)
//! and the per-request lookup the deprecation, telemetry, limit and record stages share.
//!
//! The table is derived from the OpenAPI document that `routes::configure` generates, but it lives here, below
//! `state` and `routes`, so the stages that ask "which operation?" need neither. `startup` builds the document,
//! `state` derives the table from it, and the app registers the table as its own app data ([`operation_of`]
//! reads it there).

use std::sync::Arc;

use actix_web::HttpMessage as _;
use actix_web::dev::ServiceRequest;
use actix_web::web;

/// Every route's path template, methods and operation ids: 404 versus 405, and which operation a request is.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<(Template, Vec<RouteMethod>)>,
    /// The indexes in `entries` of the templates of each segment count: a path is compared only with the
    /// templates it could fit (a dozen of the 45 for a document's path instead of all of them).
    by_length: Vec<Vec<usize>>,
}

/// A path template split at `/`: literal segments match exactly, a `{name}` segment matches any non-empty
/// segment. Every request asks which operation it is ([`operation_of`]), so this is a segment compare, not a
/// regular expression per template.
#[derive(Debug)]
struct Template {
    /// As declared: `/api/v1/documents/{id}`.
    text: Box<str>,
    /// `None` for a `{parameter}` segment.
    segments: Vec<Option<Box<str>>>,
    parameters: usize,
}

impl Template {
    fn parse(template: &str) -> Self {
        let segments: Vec<_> =
            template.split('/').map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| Box::from(s))).collect();
        let parameters = segments.iter().filter(|s| s.is_none()).count();
        Template { text: Box::from(template), segments, parameters }
    }

    /// Whether the path, split at `/` once by the caller ([`segments`]), fits the template. Compared from the
    /// end: every API path starts `/api/v1/`, so the first segments that differ are the last ones.
    fn is_match(&self, parts: &[&str]) -> bool {
        self.segments.len() == parts.len()
            && self.segments.iter().rev().zip(parts.iter().rev()).all(|(segment, part)| match segment {
                Some(literal) => **literal == **part,
                None => !part.is_empty(),
            })
    }
}

/// A request path split at `/`, once per lookup rather than once per template.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').collect()
}

/// A method served on a route, and the operation id behind it (none for the host-protocol routes).
type RouteMethod = (&'static str, Option<Arc<str>>);

impl RouteTable {
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut table = RouteTable::default();
        for (path, item) in &doc.paths.paths {
            let operations = [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("OPTIONS", &item.options),
                ("HEAD", &item.head),
                ("PATCH", &item.patch),
            ];
            let methods = operations
                .iter()
                .filter_map(|(m, op)| op.as_ref().map(|op| (*m, op.operation_id.as_deref().map(Arc::from))))
                .collect();
            table.push(Template::parse(path), methods);
        }
        table
    }

    pub fn add(&mut self, template: &str, methods: Vec<&'static str>) {
        self.push(Template::parse(template), methods.into_iter().map(|m| (m, None)).collect());
    }

    fn push(&mut self, template: Template, methods: Vec<RouteMethod>) {
        let length = template.segments.len();
        if self.by_length.len() <= length {
            self.by_length.resize_with(length + 1, Vec::new);
        }
        self.by_length[length].push(self.entries.len());
        self.entries.push((template, methods));
    }

    /// The templates `parts` fits.
    fn matching<'a, 'p>(&'a self, parts: &'p [&'p str]) -> impl Iterator<Item = &'a (Template, Vec<RouteMethod>)> {
        let candidates = self.by_length.get(parts.len()).map_or(&[][..], Vec::as_slice);
        candidates.iter().map(|&i| &self.entries[i]).filter(move |(template, _)| template.is_match(parts))
    }

    /// The methods allowed on `path`, or `None` when no route template matches it.
    pub fn allowed_methods(&self, path: &str) -> Option<Vec<&'static str>> {
        let parts = segments(path);
        let mut allowed: Vec<&'static str> =
            self.matching(&parts).flat_map(|(_, m)| m.iter().map(|(method, _)| *method)).collect();
        if allowed.is_empty() {
            return None;
        }
        allowed.sort_unstable();
        allowed.dedup();
        Some(allowed)
    }

    /// The methods allowed on `path` as `Allow` lists them (a 405's, a preflight's): with `HEAD` wherever `GET` is,
    /// since every `GET` answers `HEAD` too (`api::head`); `None` when no route template matches it.
    pub fn allow(&self, path: &str) -> Option<String> {
        let mut methods = self.allowed_methods(path)?;
        if methods.contains(&"GET") {
            methods.push("HEAD");
        }
        Some(methods.join(", "))
    }

    /// How many route templates match `path` (the route table's own check that its order is free).
    #[cfg(test)]
    pub(crate) fn templates_matching(&self, path: &str) -> usize {
        let parts = segments(path);
        self.matching(&parts).count()
    }

    /// The template of the route serving `method` on `path` (literal templates win), as the router would have
    /// matched it: what a request answered before routing (a refusal, a malformed body) is recorded under.
    pub fn template(&self, method: &str, path: &str) -> Option<&str> {
        let parts = segments(path);
        self.matching(&parts)
            .filter(|(_, methods)| methods.iter().any(|(m, _)| *m == method))
            .min_by_key(|(template, _)| template.parameters)
            .map(|(template, _)| &*template.text)
    }

    /// The template of the route whose method `operation` is: what a request is recorded under when it never got
    /// to the router (its client left first).
    pub fn template_of(&self, operation: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, methods)| methods.iter().any(|(_, id)| id.as_deref() == Some(operation)))
            .map(|(template, _)| &*template.text)
    }

    /// The operation id serving `method` on `path`. Literal templates win over parameterized ones.
    pub fn operation(&self, method: &str, path: &str) -> Option<&Arc<str>> {
        let parts = segments(path);
        self.matching(&parts)
            .filter_map(|(template, methods)| {
                let (_, id) = methods.iter().find(|(m, _)| *m == method)?;
                Some((template.parameters, id.as_ref()?))
            })
            .min_by_key(|(parameters, _)| *parameters)
            .map(|(_, id)| id)
    }
}

/// The operation a request is, once it was asked for: kept in the request's extensions, because the
/// deprecation, limit and record stages all need it and the route table is searched once.
#[derive(Debug, Clone)]
struct MatchedOperation(Option<Arc<str>>);

/// The path as the router matches it: percent-encoded characters that need no encoding decoded (`%64ocuments` is
/// `documents`, RFC 3986 §6.2.2.2). Every lookup that decides what a request is (its operation, and so its cost,
/// its quota and its contract; the methods a path allows) reads this, never the raw `path()`: a lookup that saw
/// another path than the router would let a served request pass as no operation at all, unmetered.
pub fn routed_path(info: &actix_web::dev::Path<actix_web::dev::Url>) -> &str {
    info.as_str()
}

/// Every method of IANA's HTTP Method Registry (RFC 9110 §16.1: HTTP's own, WebDAV's, `PATCH`, `QUERY`, …).
const REGISTERED_METHODS: &[&str] = &[
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "OPTIONS",
    "ORDERPATCH",
    "PATCH",
    "POST",
    "PRI",
    "PROPFIND",
    "PROPPATCH",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "TRACE",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

/// `Err(501)` for a method no registry knows (RFC 9110 §9.1: an unrecognised method is 501); a registered one a
/// path does not allow is the caller's 405.
pub fn refuse_unknown_method(method: &actix_web::http::Method) -> Result<(), crate::error::AppError> {
    if REGISTERED_METHODS.contains(&method.as_str()) {
        return Ok(());
    }
    let shown: String = method.as_str().chars().take(40).collect();
    Err(crate::error::AppError::new(crate::error::ErrorCode::MethodNotImplemented)
        .with_detail(format!("{shown} is not an HTTP method this server implements")))
}

/// The operation id of the request (`None` for a path or method no operation serves, or an app without a
/// route table registered).
pub fn operation_of(req: &ServiceRequest) -> Option<Arc<str>> {
    if let Some(MatchedOperation(found)) = req.extensions().get::<MatchedOperation>() {
        return found.clone();
    }
    let routes = req.app_data::<web::Data<RouteTable>>()?;
    let found = routes.operation(req.method().as_str(), routed_path(req.match_info())).cloned();
    req.extensions_mut().insert(MatchedOperation(found.clone()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routed_path_is_the_one_the_router_matches() {
        let req = actix_web::test::TestRequest::get().uri("/api/v1/%64ocum%65nts?q=%64").to_srv_request();
        assert_eq!(routed_path(req.match_info()), "/api/v1/documents");
        assert_eq!(req.path(), "/api/v1/%64ocum%65nts", "what the raw path says");
        let slash = actix_web::test::TestRequest::get().uri("/api/v1/documents%2Fx").to_srv_request();
        assert_eq!(routed_path(slash.match_info()), "/api/v1/documents%2Fx", "an encoded slash stays encoded");
    }

    #[test]
    fn route_table_knows_templates_and_methods() {
        let mut table = RouteTable::default();
        table.add("/api/v1/things/{id}", vec!["GET", "DELETE"]);
        table.add("/api/v1/things/{id}", vec!["PATCH"]);
        assert_eq!(table.allowed_methods("/api/v1/things/42"), Some(vec!["DELETE", "GET", "PATCH"]));
        assert_eq!(table.allowed_methods("/api/v1/things"), None);
        assert_eq!(table.allow("/api/v1/things/42").as_deref(), Some("DELETE, GET, PATCH, HEAD"), "HEAD with GET");
        assert_eq!(table.allow("/api/v1/things"), None);
        assert_eq!(table.allowed_methods("/api/v1/things/42/more"), None);
        assert_eq!(table.allowed_methods("/api/v1/things/"), None, "a parameter is never empty");
        assert_eq!(table.allowed_methods("/api/v1/things/42/"), None, "no trailing slash");
    }
}
