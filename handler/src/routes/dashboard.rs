//! The usage dashboard: one page at `/api/dashboard/` that reads the API with the signed-in user's token and shows
//! a tenant's period (quota, projection, daily and hourly usage, errors, latency, clients, statements, limits) and,
//! for platform administrators, every tenant and the usage pipeline.
//!
//! Every file is compiled into the binary (`handler/assets/dashboard`, the chart library and MSAL.js vendored from
//! the npm registry with their licences, `vendor/README.md`), so the page works with no internet access, and its
//! Content-Security-Policy lets the browser talk to this origin only; in `entra` mode also to the sign-in
//! authority's origin, where MSAL.js redeems the authorization code (PKCE) for a token. The page is public like
//! `/api/docs`: it holds no data, and every figure it shows comes from an `/api/v1` call with the user's token, so
//! a caller sees exactly what the API lets it see. Its routes are plain actix resources, not API operations.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::config::AuthMode;
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

/// Where the page is served; `/api/dashboard` redirects to `/api/dashboard/` so relative links stay under it. The
/// Functions route `dashboard/{*rest}` (function `Dashboard`) reaches all of it.
pub const PATH: &str = "/api/dashboard";

/// A file of the page: its name under [`PATH`], content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/dashboard/", $name)),
        }
    };
}

/// Every static file of the page. `index.html` is served for the empty name.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("dashboard.js", "text/javascript; charset=utf-8"),
    asset!("dashboard.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
    asset!("vendor/msal-browser/msal-browser.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/msal-browser/LICENSE", "text/plain; charset=utf-8"),
    asset!("vendor/README.md", "text/plain; charset=utf-8"),
];

/// The sign-in settings the page reads from `config.json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PageConfig {
    /// `local` (paste a `handler dev-token`) or `entra` (MSAL.js).
    pub auth_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entra: Option<EntraSignIn>,
}

/// What MSAL.js needs: the app registration (the API's own, with a single-page-application redirect URI), the
/// authority, and the scopes of the API to ask for.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EntraSignIn {
    /// The API's client id: the first `METERLINE_AUTH_AUDIENCES` value that is a GUID. Absent when none is, and
    /// the page then says that sign-in is not configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `METERLINE_AUTH_AUTHORITY` without its `/v2.0` suffix (MSAL.js adds the protocol paths itself).
    pub authority: String,
    /// The delegated scope the tenant view needs: `<App ID URI>/Usage.Read`.
    pub usage_scope: String,
    /// The delegated scope the platform view needs: `<App ID URI>/Platform.Admin`.
    pub platform_scope: String,
}

impl PageConfig {
    pub fn of(mode: &AuthMode) -> Self {
        match mode {
            AuthMode::Local { .. } => PageConfig { auth_mode: "local", entra: None },
            AuthMode::Entra { authority, audiences } => {
                let client_id = audiences.iter().find(|a| a.parse::<uuid::Uuid>().is_ok()).cloned();
                // The App ID URI is the audience that is not the bare client id (`api://meterline`); else the
                // default Entra gives an API, `api://<client id>`.
                let app_id_uri = audiences
                    .iter()
                    .find(|a| a.parse::<uuid::Uuid>().is_err())
                    .cloned()
                    .or_else(|| client_id.as_ref().map(|id| format!("api://{id}")))
                    .unwrap_or_default();
                let app_id_uri = app_id_uri.trim_end_matches('/');
                PageConfig {
                    auth_mode: "entra",
                    entra: Some(EntraSignIn {
                        client_id,
                        authority: authority.trim_end_matches("/v2.0").to_owned(),
                        usage_scope: format!("{app_id_uri}/Usage.Read"),
                        platform_scope: format!("{app_id_uri}/Platform.Admin"),
                    }),
                }
            }
        }
    }
}

/// The page's Content-Security-Policy: nothing inline, nothing from elsewhere; in `entra` mode the page may also
/// call the authority's origin (MSAL.js fetches its metadata and redeems the code there).
pub fn content_security_policy(mode: &AuthMode) -> String {
    let authority = match mode {
        AuthMode::Entra { authority, .. } => origin_of(authority).map(|o| format!(" {o}")).unwrap_or_default(),
        AuthMode::Local { .. } => String::new(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self'; \
         connect-src 'self'{authority}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// `https://host[:port]` of a URL; `None` for anything else.
fn origin_of(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find('/').map_or(url.len(), |i| url.len() - rest.len() + i);
    Some(&url[..end])
}

/// Registers the page. Call it before the `/api` scope, which would otherwise swallow `/api/dashboard`.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.map(|cfg| crate::api::page::serve(cfg, PATH, file));
}

/// `GET /api/dashboard/{file}`: a file of the page, or its sign-in settings (`config.json`).
async fn file(file: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let name = match file.as_str() {
        "" => "index.html",
        other => other,
    };
    let mode = &state.config.auth.mode;
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, content_security_policy(mode)))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if name == "config.json" {
        return Ok(response.insert_header((header::CACHE_CONTROL, "no-store")).json(PageConfig::of(mode)));
    }
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AppError::new(ErrorCode::NotFound).with_detail(format!("no file {PATH}/{name}")))?;
    // The page and its script must follow the deployed API; the vendored libraries change only with a build.
    let cache = if name.starts_with("vendor/") { "public, max-age=3600" } else { "no-cache" };
    Ok(response.content_type(asset.content_type).insert_header((header::CACHE_CONTROL, cache)).body(asset.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entra(audiences: &[&str]) -> AuthMode {
        AuthMode::Entra {
            authority: "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0".into(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn local_mode_allows_this_origin_only_and_entra_mode_also_the_authority() {
        let local = content_security_policy(&AuthMode::Local { key_path: "k".into() });
        assert!(local.contains("connect-src 'self';"), "{local}");
        assert!(local.contains("script-src 'self';") && !local.contains("unsafe"), "{local}");
        let csp = content_security_policy(&entra(&["api://meterline"]));
        assert!(csp.contains("connect-src 'self' https://login.microsoftonline.com;"), "{csp}");
    }

    #[test]
    fn entra_sign_in_uses_the_apis_client_id_and_app_id_uri() {
        let id = "6f1c2a3b-0000-0000-0000-000000000000";
        let config = PageConfig::of(&entra(&["api://meterline", id]));
        let sign_in = config.entra.unwrap();
        assert_eq!(sign_in.client_id.as_deref(), Some(id));
        assert_eq!(sign_in.authority, "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555");
        assert_eq!(sign_in.usage_scope, "api://meterline/Usage.Read");
        assert_eq!(sign_in.platform_scope, "api://meterline/Platform.Admin");
        let only_id = PageConfig::of(&entra(&[id])).entra.unwrap();
        assert_eq!(only_id.usage_scope, format!("api://{id}/Usage.Read"));
        let no_id = PageConfig::of(&entra(&["api://meterline"])).entra.unwrap();
        assert_eq!(no_id.client_id, None, "the page says sign-in is not configured");
    }

    #[test]
    fn every_file_the_page_links_is_embedded() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert!(!html.contains("//"), "the page links only to its own files");
        for attr in ["href=\"./", "src=\"./"] {
            for linked in html.split(attr).skip(1) {
                let name = &linked[..linked.find('"').unwrap()];
                assert!(ASSETS.iter().any(|a| a.name == name), "{name} is linked but not embedded");
            }
        }
        let js = std::str::from_utf8(ASSETS[1].bytes).unwrap();
        assert!(js.contains("vendor/msal-browser/msal-browser.min.js"), "MSAL.js is loaded only by the script");
    }

    #[test]
    fn origins_are_cut_at_the_path() {
        assert_eq!(origin_of("https://login.microsoftonline.com/x/v2.0"), Some("https://login.microsoftonline.com"));
        assert_eq!(origin_of("http://127.0.0.1:4000"), Some("http://127.0.0.1:4000"));
        assert_eq!(origin_of("ftp://x"), None);
    }

    #[test]
    fn the_page_is_not_an_api_operation() {
        let doc = crate::routes::openapi();
        assert!(doc.paths.paths.keys().all(|p| !p.starts_with(PATH)));
    }
}
