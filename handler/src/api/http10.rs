//! HTTP/1.0 clients get answers of known length: actix-http frames a streamed body (the usage and statement CSV
//! exports) with chunked transfer coding whatever the request's version, which RFC 9112 §6.1 forbids towards an
//! HTTP/1.0 client (it reads the chunk sizes as content). For such a client this stage collects the stream, so the
//! answer carries `Content-Length`; HTTP/1.1 answers stream as before.

use actix_web::Error;
use actix_web::body::{BodySize, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Version;
use actix_web::middleware::Next;
use actix_web::web::Bytes;

/// Middleware (app-wide): the streamed body of an answer to an HTTP/1.0 request, collected into one of known length.
pub async fn sized_for_http10(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, Bytes>>, Error> {
    let http10 = req.version() == Version::HTTP_10;
    let res = next.call(req).await?;
    if !http10 || !matches!(res.response().body().size(), BodySize::Stream) {
        return Ok(res.map_into_left_body());
    }
    let (req, res) = res.into_parts();
    let (res, body) = res.into_parts();
    let bytes = actix_web::body::to_bytes(body)
        .await
        .map_err(|e| actix_web::error::ErrorInternalServerError(e.into().to_string()))?;
    Ok(ServiceResponse::new(req, res.set_body(bytes)).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    async fn streamed() -> HttpResponse {
        let parts = futures_util::stream::iter(["a,b\r\n", "1,2\r\n"].map(|s| Ok::<_, Error>(Bytes::from(s))));
        HttpResponse::Ok().content_type("text/csv").streaming(parts)
    }

    #[actix_web::test]
    async fn an_http10_client_gets_a_streamed_answer_whole_and_http11_keeps_the_stream() {
        let app =
            test::init_service(App::new().route("/csv", web::get().to(streamed)).wrap(from_fn(sized_for_http10))).await;
        let old =
            test::call_service(&app, test::TestRequest::get().uri("/csv").version(Version::HTTP_10).to_request()).await;
        assert_eq!(old.response().body().size(), BodySize::Sized(10), "known length for HTTP/1.0");
        assert_eq!(test::read_body(old).await, Bytes::from_static(b"a,b\r\n1,2\r\n"));
        let new = test::call_service(&app, test::TestRequest::get().uri("/csv").to_request()).await;
        assert_eq!(new.response().body().size(), BodySize::Stream, "HTTP/1.1 still streams");
    }
}
