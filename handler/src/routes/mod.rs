//! The HTTP API: the one route table (which also generates the OpenAPI document) and the not-matched fallback.

pub mod audit;
pub mod billing;
pub mod clients;
pub mod dashboard;
pub mod docs;
pub mod documents;
pub mod grants;
pub mod health;
pub mod me;
pub mod plans;
pub mod platform;
pub mod scope;
pub mod tenants;
pub mod usage;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, web};
use utoipa::OpenApi as _;
use utoipa_actix_web::AppExt as _;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

/// The base of the OpenAPI document; paths are collected from the route table by utoipa-actix-web.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Meterline API",
        description = "A metered, multi-tenant API on Azure Functions. Every error is an RFC 9457 problem+json body.",
        version = "1.0.0"
    ),
    components(schemas(
        crate::error::Problem,
        crate::error::FieldError,
        crate::error::AzureErrorResponse,
        crate::error::AzureError,
        documents::TagFilter
    )),
    modifiers(&BearerSecurity),
    tags((name = "operations", description = "Health and service description"))
)]
struct ApiDoc;

/// Declares the `entra` bearer security scheme every `/api/v1` operation refers to.
struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "entra",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Microsoft Entra ID access token for this API. App-only tokens carry app roles in `roles`, \
                         delegated tokens carry scopes in `scp`; each operation's required permission is its scope here.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Registers every API route. This is the route table: adding a handler here adds it to the OpenAPI document.
pub fn configure(cfg: &mut ServiceConfig) {
    // Before any scope: a resource registered after a scope with the same prefix is never reached.
    cfg.service(openapi_document);
    cfg.configure(docs::configure); // Swagger UI at /api/docs; not an API operation, not in the document
    cfg.configure(dashboard::configure); // the usage dashboard at /api/dashboard; a page over the API, not an operation
    // Everything under /api/v1 passes one pipeline: metering and audit, authentication, limits. Each handler
    // declares its permission in its signature; its cost is in metering::costs; a state change is described
    // for the audit trail with metering::audit::note.
    cfg.service(
        utoipa_actix_web::scope("/api/v1")
            // The pipeline, innermost first: the operation's contract (query parameters and body against the
            // document, `api::contract`) once the call is admitted; limits (plan, rate, quota) need the caller; authentication
            // resolves it; framework errors (e.g. a body over `PayloadConfig`) become problems, so the record
            // stage measures the response the client gets; recording wraps them all so even a refused request
            // leaves its usage event.
            .wrap(actix_web::middleware::from_fn(crate::api::gate::check))
            .wrap(actix_web::middleware::from_fn(crate::metering::stage::limit))
            .wrap(actix_web::middleware::from_fn(crate::auth::guard::authenticate))
            .wrap(actix_web::middleware::from_fn(crate::error::problems))
            .wrap(actix_web::middleware::from_fn(crate::metering::stage::record))
            // Every answer, a problem's too.
            .wrap(
                crate::api::V1_ANSWER_FIELDS
                    .into_iter()
                    .fold(actix_web::middleware::DefaultHeaders::new(), |headers, field| headers.add(field)),
            )
            // actix tries the routes in this order, a regular expression per templated path (no two templates
            // match the same path, so the order decides only the cost). The data plane comes first, its fixed
            // paths before its templated ones: `me` meets no expression, a document read only its own
            // (BENCHMARKS.md, "Route order").
            .service(me::get_me)
            .service(me::get_whoami)
            .service(documents::list_documents)
            .service(documents::create_document)
            .service(documents::get_document)
            .service(documents::replace_document)
            .service(documents::patch_document)
            .service(documents::delete_document)
            .service(usage::get_usage_summary)
            .service(usage::get_usage)
            .service(usage::export_usage)
            .service(platform::list_tenant_usage)
            .service(platform::get_usage_pipeline)
            .service(billing::list_billing_statements)
            .service(billing::get_billing_statement)
            .service(tenants::list_tenants)
            .service(tenants::create_tenant)
            .service(tenants::get_tenant)
            .service(tenants::patch_tenant)
            .service(tenants::suspend_tenant)
            .service(tenants::reactivate_tenant)
            .service(plans::list_plans)
            .service(plans::create_plan)
            .service(plans::get_plan)
            .service(plans::replace_plan)
            .service(plans::get_plan_costs)
            .service(plans::replace_plan_costs)
            .service(clients::list_clients)
            .service(clients::register_client)
            .service(clients::get_client)
            .service(clients::revoke_client)
            .service(clients::set_client_limits)
            .service(clients::list_tenant_clients)
            .service(clients::get_tenant_client)
            .service(clients::approve_client)
            .service(clients::reject_client)
            .service(grants::list_grants)
            .service(grants::create_grant)
            .service(grants::get_grant)
            .service(grants::revoke_grant)
            .service(audit::verify_audit_chain)
            .service(audit::list_audit_events),
    );
    // After /api/v1: actix matches scopes by prefix in registration order, and /api would swallow /api/v1.
    cfg.service(utoipa_actix_web::scope("/api").service(health::live).service(health::ready));
}

/// The OpenAPI 3.1 document of the API, as served at `/api/openapi.json` and printed by `handler openapi`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) =
        actix_web::App::new().into_utoipa_app().openapi(ApiDoc::openapi()).configure(configure).split_for_parts();
    crate::api::deprecation::mark(&mut doc);
    annotate_permissions(&mut doc);
    crate::metering::costs::annotate(&mut doc);
    crate::api::contract::declare_statuses(&mut doc);
    doc
}

/// `x-meterline-permission` on every operation: the permission its security requirement names,
/// `authenticated` when any caller with a valid token passes, `anonymous` without a requirement.
fn annotate_permissions(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
        {
            let value = serde_json::to_value(&op.security).unwrap_or_default();
            let permission = match value.pointer("/0/entra").and_then(|s| s.as_array()) {
                None => "anonymous".to_owned(),
                Some(scopes) => scopes.first().and_then(|s| s.as_str()).unwrap_or("authenticated").to_owned(),
            };
            let mut extensions = op.extensions.take().unwrap_or_default();
            extensions.insert("x-meterline-permission".into(), serde_json::Value::String(permission));
            op.extensions = Some(extensions);
        }
    }
}

/// Serves the OpenAPI document.
#[utoipa::path(
    tag = "operations",
    operation_id = "getOpenApiDocument",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
#[get("/api/openapi.json")]
async fn openapi_document(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(state.openapi_json.clone())
}

/// The default service: 501 for a method HTTP does not define, 405 with `Allow` when the path exists under other
/// methods, else 404.
pub async fn not_matched(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    crate::api::operations::refuse_unknown_method(req.method())?;
    let path = echoed(req.path());
    Err(match state.routes.allow(crate::api::operations::routed_path(req.match_info())) {
        Some(allow) => AppError::new(ErrorCode::MethodNotAllowed)
            .with_detail(format!("{} is not allowed on {path}; allowed: {allow}", req.method()))
            .with_header(header::ALLOW, HeaderValue::from_str(&allow).expect("method names are valid header text")),
        None => AppError::new(ErrorCode::NotFound).with_detail(format!("no route matches {} {path}", req.method())),
    })
}

/// The longest path a problem detail repeats back; longer paths are cut at a character boundary and marked.
const ECHOED_PATH_CHARS: usize = 200;

/// `path` as a problem detail may quote it: whole when short, else its first [`ECHOED_PATH_CHARS`] characters
/// and an ellipsis, so a hostile 60 KB path does not come back as a 60 KB answer.
fn echoed(path: &str) -> std::borrow::Cow<'_, str> {
    match path.char_indices().nth(ECHOED_PATH_CHARS) {
        None => path.into(),
        Some((cut, _)) => format!("{}…", &path[..cut]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::operations::RouteTable;

    #[test]
    fn problem_details_quote_long_paths_cut_short() {
        assert_eq!(echoed("/api/v1/nothing"), "/api/v1/nothing");
        let long = format!("/api/{}", "é".repeat(500));
        let quoted = echoed(&long);
        assert_eq!(quoted.chars().count(), ECHOED_PATH_CHARS + 1);
        assert!(quoted.starts_with("/api/é") && quoted.ends_with('…'));
    }

    /// Every operation id of the document.
    fn operation_ids(doc: &utoipa::openapi::OpenApi) -> Vec<(String, String)> {
        doc.paths
            .paths
            .iter()
            .flat_map(|(path, i)| [&i.get, &i.put, &i.post, &i.delete, &i.patch].map(|op| (path, op)))
            .filter_map(|(path, op)| Some((path.clone(), op.as_ref()?.operation_id.clone().unwrap_or_default())))
            .collect()
    }

    #[test]
    fn every_deprecated_operation_exists() {
        let ids = operation_ids(&openapi());
        for d in crate::api::deprecation::DEPRECATED {
            assert!(ids.iter().any(|(_, id)| id == d.operation_id), "{} is not an operation", d.operation_id);
        }
    }

    #[test]
    fn every_v1_operation_has_a_cost_and_every_cost_an_operation() {
        let ids = operation_ids(&openapi());
        let costs = crate::metering::costs::COSTS;
        for (path, id) in &ids {
            if path.starts_with("/api/v1/") {
                assert!(costs.iter().any(|(op, _, _)| op == id), "{id} has no entry in COSTS");
            }
        }
        for (op, cost, _) in costs {
            assert!(ids.iter().any(|(_, id)| id == op), "COSTS names {op}, which is not an operation");
            assert!(*cost > 0);
        }
    }

    #[test]
    fn the_document_lists_the_health_routes() {
        let table = RouteTable::from_openapi(&openapi());
        assert_eq!(table.allowed_methods("/api/health"), Some(vec!["GET"]));
        assert_eq!(table.allowed_methods("/api/health/ready"), Some(vec!["GET"]));
        assert_eq!(table.allowed_methods("/api/openapi.json"), Some(vec!["GET"]));
        assert_eq!(table.operation("GET", "/api/health/ready").map(|op| &**op), Some("getReadiness"));
        assert_eq!(table.operation("POST", "/api/health/ready"), None);
    }

    /// `configure` orders the routes by cost (actix tries them in turn), which is safe only while no path
    /// fits two templates: a fixed segment that is also another template's parameter would make the order
    /// decide which handler runs.
    #[test]
    fn no_path_fits_two_route_templates() {
        let doc = openapi();
        let table = RouteTable::from_openapi(&doc);
        for template in doc.paths.paths.keys() {
            let path: Vec<&str> =
                template.split('/').map(|s| if s.starts_with('{') && s.ends_with('}') { "x" } else { s }).collect();
            let path = path.join("/");
            assert_eq!(table.templates_matching(&path), 1, "{path} (from {template}) fits another template too");
        }
    }

    fn contracts() -> crate::api::contract::Contracts {
        crate::api::contract::Contracts::from_openapi(&openapi(), 1024).unwrap()
    }

    #[test]
    fn every_api_operation_declares_what_the_pipeline_can_answer() {
        let doc = openapi();
        for (path, item) in doc.paths.paths.iter().filter(|(p, _)| p.starts_with("/api/v1/")) {
            for op in [&item.get, &item.put, &item.post, &item.delete, &item.patch].into_iter().flatten() {
                for status in [401, 403, 422, 429, 503] {
                    assert!(op.responses.responses.contains_key(&status.to_string()), "{path}: {status}");
                }
            }
        }
        let contracts = contracts();
        assert!(contracts.declares("createDocument", 415) && contracts.declares("createDocument", 413));
        assert!(contracts.declares("replaceDocument", 412) && contracts.declares("replaceDocument", 428));
        assert!(contracts.declares("getDocument", 404));
        assert!(!contracts.declares("getMe", 404), "no path parameter, no resource to miss");
        assert!(!contracts.declares("listDocuments", 415), "no body");
    }

    #[test]
    fn unknown_and_ill_typed_query_parameters_are_each_named() {
        let contracts = contracts();
        let errors = contracts.query_failures("listDocuments", "maxpagesize=0&count=yes&colour=red&tag=a&tag=b,c");
        let named: Vec<_> = errors.iter().map(|e| (e.parameter.as_deref().unwrap(), e.code.as_str())).collect();
        assert!(named.contains(&("colour", "unknown")), "{named:?}");
        assert!(named.contains(&("maxpagesize", "minimum")), "{named:?}");
        assert!(named.contains(&("count", "type")), "{named:?}");
        assert_eq!(named.len(), 3, "repeated and comma-separated tags are one list: {named:?}");
        assert!(contracts.query_failures("listDocuments", "maxpagesize=10&count=true&tag=a").is_empty());
        let errors = contracts.query_failures("getMe", "tenantId=x");
        assert_eq!(errors[0].message, "not a parameter of this operation; it takes no query parameters");
    }

    #[test]
    fn body_failures_carry_json_pointers() {
        let body = serde_json::json!({"tags": ["a", 7], "status": "gone", "colour": 1});
        let errors = contracts().body_failures("createDocument", &body);
        let pointers: Vec<_> = errors.iter().map(|e| (e.pointer.as_deref().unwrap(), e.code.as_str())).collect();
        let expected = [
            ("/title", "required"),
            ("/docType", "required"),
            ("/tags/1", "type"),
            ("/status", "enum"),
            ("/colour", "unknown"),
        ];
        for expected in expected {
            assert!(pointers.contains(&expected), "{expected:?} not in {pointers:?}");
        }
        assert_eq!(errors.iter().find(|e| e.pointer.as_deref() == Some("/tags/1")).unwrap().field, "tags[1]");
        assert!(errors.iter().all(|e| !e.message.contains("line")), "no serde positions: {errors:?}");
    }

    #[actix_web::test]
    async fn an_undeclared_status_is_a_server_error_in_debug_builds() {
        use actix_web::{App, test};
        let doc = openapi();
        let contracts = web::Data::new(crate::api::contract::Contracts::from_openapi(&doc, 1024).unwrap());
        let app = test::init_service(
            App::new()
                .app_data(contracts)
                .app_data(web::Data::new(RouteTable::from_openapi(&doc)))
                .wrap(actix_web::middleware::from_fn(crate::api::gate::conformance))
                .route("/api/v1/me", web::get().to(|| async { HttpResponse::Conflict().finish() }))
                .route("/api/v1/documents/{id}", web::get().to(|| async { HttpResponse::NotFound().finish() })),
        )
        .await;
        let status = |path: &'static str| {
            let app = &app;
            async move { test::call_service(app, test::TestRequest::get().uri(path).to_request()).await.status() }
        };
        assert_eq!(status("/api/v1/me").await, 500, "getMe declares no 409");
        assert_eq!(status("/api/v1/documents/x").await, 404, "getDocument declares its 404");
    }
}
