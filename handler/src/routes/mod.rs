//! The HTTP API: the one route table (which also generates the OpenAPI document) and the not-matched fallback.

pub mod health;
pub mod me;
pub mod tenants;

use actix_web::dev::ResourceDef;
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
    components(schemas(crate::error::Problem, crate::error::FieldError)),
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
    // Everything under /api/v1 is authenticated by one middleware; each handler declares its permission.
    cfg.service(
        utoipa_actix_web::scope("/api/v1")
            .wrap(actix_web::middleware::from_fn(crate::auth::guard::authenticate))
            .service(me::get_me)
            .service(tenants::list_tenants)
            .service(tenants::get_tenant),
    );
    // After /api/v1: actix matches scopes by prefix in registration order, and /api would swallow /api/v1.
    cfg.service(utoipa_actix_web::scope("/api").service(health::live).service(health::ready));
}

/// The OpenAPI 3.1 document of the API, as served at `/api/openapi.json` and printed by `handler openapi`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) =
        actix_web::App::new().into_utoipa_app().openapi(ApiDoc::openapi()).configure(configure).split_for_parts();
    doc
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

/// Every route's path template and methods, to tell "no such path" (404) from "not this method" (405).
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<(ResourceDef, Vec<&'static str>)>,
}

impl RouteTable {
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut table = RouteTable::default();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("OPTIONS", item.options.is_some()),
                ("HEAD", item.head.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            table.add(path, methods.iter().filter(|(_, present)| *present).map(|(m, _)| *m).collect());
        }
        table
    }

    pub fn add(&mut self, template: &str, methods: Vec<&'static str>) {
        self.entries.push((ResourceDef::new(template), methods));
    }

    /// The methods allowed on `path`, or `None` when no route template matches it.
    pub fn allowed_methods(&self, path: &str) -> Option<Vec<&'static str>> {
        let mut allowed: Vec<&'static str> =
            self.entries.iter().filter(|(def, _)| def.is_match(path)).flat_map(|(_, m)| m.iter().copied()).collect();
        if allowed.is_empty() {
            return None;
        }
        allowed.sort_unstable();
        allowed.dedup();
        Some(allowed)
    }
}

/// The default service: 405 with `Allow` when the path exists under other methods, else 404.
pub async fn not_matched(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let path = req.path();
    Err(match state.routes.allowed_methods(path) {
        Some(methods) => {
            let allow = methods.join(", ");
            AppError::new(ErrorCode::MethodNotAllowed)
                .with_detail(format!("{} is not allowed on {path}; allowed: {allow}", req.method()))
                .with_header(header::ALLOW, HeaderValue::from_str(&allow).expect("method names are valid header text"))
        }
        None => AppError::new(ErrorCode::NotFound).with_detail(format!("no route matches {} {path}", req.method())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_knows_templates_and_methods() {
        let mut table = RouteTable::default();
        table.add("/api/v1/things/{id}", vec!["GET", "DELETE"]);
        table.add("/api/v1/things/{id}", vec!["PATCH"]);
        assert_eq!(table.allowed_methods("/api/v1/things/42"), Some(vec!["DELETE", "GET", "PATCH"]));
        assert_eq!(table.allowed_methods("/api/v1/things"), None);
        assert_eq!(table.allowed_methods("/api/v1/things/42/more"), None);
    }

    #[test]
    fn the_document_lists_the_health_routes() {
        let table = RouteTable::from_openapi(&openapi());
        assert_eq!(table.allowed_methods("/api/health"), Some(vec!["GET"]));
        assert_eq!(table.allowed_methods("/api/health/ready"), Some(vec!["GET"]));
        assert_eq!(table.allowed_methods("/api/openapi.json"), Some(vec!["GET"]));
    }
}
