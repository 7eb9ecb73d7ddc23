//! The API reference page: Swagger UI at `/api/docs`, rendering the document served at `/api/openapi.json`.
//!
//! The Swagger UI files are compiled into the binary (`utoipa-swagger-ui` with `vendored`), so the page works
//! with no internet access, and its Content-Security-Policy lets the browser load nothing from anywhere else.
//! The page is public like the document it renders (it is outside `/api/v1`, so no bearer token is needed to
//! read it; "Try it out" sends the token the reader enters). Its routes are deliberately not API operations:
//! they are registered as plain actix resources and do not appear in the OpenAPI document.

use std::sync::{Arc, LazyLock};

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_swagger_ui::Config;

use crate::error::{AppError, ErrorCode};

/// Where the page is served. `/api/docs` redirects to `/api/docs/`, whose relative asset links then resolve
/// under `/api/docs/`. The Functions route `docs/{*rest}` (function `Docs`) reaches all of it.
pub const PATH: &str = "/api/docs";

/// The document the page renders: the API's own, served by `routes::openapi_document`.
const SPEC_URL: &str = "/api/openapi.json";

/// Same-origin only. Swagger UI sets inline `style` attributes and uses `data:` images; it needs no eval.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The Swagger UI configuration, rendered into `swagger-initializer.js`.
static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        Config::new([SPEC_URL])
            // The default validator badge is an image from validator.swagger.io that would leak the spec URL.
            .validator_url("none")
            .display_operation_id(true)
            .display_request_duration(true)
            .filter(true),
    )
});

/// Registers the page. Call it before the `/api` scope, which would otherwise swallow `/api/docs`.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.map(|cfg| crate::api::page::serve(cfg, PATH, asset));
}

/// `GET /api/docs/{file}`: one Swagger UI file; the empty name is `index.html`.
async fn asset(file: web::Path<String>) -> Result<HttpResponse, AppError> {
    let file = file.into_inner();
    let served = utoipa_swagger_ui::serve(&file, CONFIG.clone())
        .map_err(|e| AppError::internal(anyhow::anyhow!("rendering the Swagger UI file {file:?}: {e}")))?
        .ok_or_else(|| AppError::new(ErrorCode::NotFound).with_detail(format!("no file {PATH}/{file}")))?;
    // The page and its configuration must follow the deployed API; the library files change only with a build.
    let cache = if file.is_empty() || file.ends_with(".html") || file == "swagger-initializer.js" {
        "no-cache"
    } else {
        "public, max-age=3600"
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type(served.content_type)
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if served.gzpipped {
        response.insert_header((header::CONTENT_ENCODING, "gzip"));
    }
    Ok(response.body(served.bytes.into_owned()))
}

#[cfg(test)]
mod tests {
    use actix_web::test::{TestRequest, call_service, init_service, read_body};
    use actix_web::{App, http::StatusCode};
    use utoipa_actix_web::AppExt as _;

    use super::*;

    async fn call(req: TestRequest) -> actix_web::dev::ServiceResponse {
        let (app, _) = App::new().into_utoipa_app().configure(configure).split_for_parts();
        let app = init_service(app).await;
        call_service(&app, req.to_request()).await
    }

    #[actix_web::test]
    async fn the_bare_path_redirects_to_the_page() {
        let res = call(TestRequest::get().uri("/api/docs")).await;
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(res.headers().get(header::LOCATION).unwrap(), "/api/docs/");
        let res = call(TestRequest::get().uri("/api/docs?x=1")).await;
        assert_eq!(res.headers().get(header::LOCATION).unwrap(), "/api/docs/?x=1");
    }

    #[actix_web::test]
    async fn the_page_loads_its_files_from_here_and_renders_the_served_document() {
        let res = call(TestRequest::get().uri("/api/docs/")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get(header::CONTENT_TYPE).unwrap().to_str().unwrap().starts_with("text/html"));
        assert!(res.headers().get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap().contains("'self'"));
        let html = String::from_utf8(read_body(res).await.to_vec()).unwrap();
        assert!(!html.contains("//"), "the page links only to its own files: {html}");
        for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"] {
            assert!(html.contains(&format!("./{asset}")), "index.html links {asset}");
            let res = call(TestRequest::get().uri(&format!("/api/docs/{asset}"))).await;
            assert_eq!(res.status(), StatusCode::OK, "{asset}");
        }
        let res = call(TestRequest::get().uri("/api/docs/swagger-initializer.js")).await;
        let js = String::from_utf8(read_body(res).await.to_vec()).unwrap();
        assert!(js.contains(r#""url": "/api/openapi.json""#), "{js}");
        assert!(js.contains(r#""validatorUrl": "none""#), "{js}");
    }

    #[actix_web::test]
    async fn unknown_files_and_other_methods_are_problems() {
        let res = call(TestRequest::get().uri("/api/docs/nope.js")).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers().get(header::CONTENT_TYPE).unwrap(), "application/problem+json");
        let res = call(TestRequest::post().uri("/api/docs/")).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers().get(header::ALLOW).unwrap(), "GET, HEAD");
        let res = call(TestRequest::delete().uri("/api/docs")).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_page_is_not_an_api_operation() {
        let doc = crate::routes::openapi();
        assert!(doc.paths.paths.keys().all(|p| !p.starts_with(PATH)), "{:?}", doc.paths.paths.keys());
    }
}
