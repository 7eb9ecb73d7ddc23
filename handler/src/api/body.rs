//! Reading a request's body, bounded in size and in time: a client that sends part of a body and stops, or trickles
//! it, holds its connection and its buffer (up to the body limit) for seconds, not forever.

use actix_web::HttpMessage as _;
use actix_web::dev::ServiceRequest;
use futures_util::StreamExt as _;

use crate::error::{AppError, ErrorCode};

/// How long a body may pause between two parts, and how long all of it may take: a client that sends part of a
/// body and stops, or trickles it, holds its connection and its buffer (up to the body limit) no longer.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
const BODY_WHOLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The whole body, refused with 413 once it passes `limit` bytes (at once when its declared length does), and with
/// 408 when it pauses longer than [`BODY_IDLE`] or takes longer than [`BODY_WHOLE`].
pub async fn read_body(
    req: &mut ServiceRequest,
    limit: usize,
    declared: Option<usize>,
) -> Result<actix_web::web::Bytes, AppError> {
    let too_large = || AppError::new(ErrorCode::PayloadTooLarge).with_detail(format!("the limit is {limit} bytes"));
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut payload = req.take_payload();
    let read = async {
        let mut body = actix_web::web::BytesMut::new();
        loop {
            let next = tokio::time::timeout(BODY_IDLE, payload.next()).await.map_err(|_| {
                AppError::new(ErrorCode::RequestTimeout)
                    .with_detail(format!("the body stopped arriving for {} s", BODY_IDLE.as_secs()))
            })?;
            let Some(chunk) = next else { return Ok(body.freeze()) };
            let chunk = chunk.map_err(|e| {
                AppError::new(ErrorCode::MalformedJson).with_detail(format!("reading the body failed: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
    };
    tokio::time::timeout(BODY_WHOLE, read).await.map_err(|_| {
        AppError::new(ErrorCode::RequestTimeout)
            .with_detail(format!("the body did not arrive whole within {} s", BODY_WHOLE.as_secs()))
    })?
}

#[cfg(test)]
mod tests {
    use actix_web::web::Bytes;
    use futures_util::StreamExt as _;

    use super::*;

    /// A request whose body is `parts`, each after `pause`, then nothing more (the stream never ends).
    fn trickled(parts: usize, pause: std::time::Duration) -> ServiceRequest {
        let mut req = actix_web::test::TestRequest::post().to_srv_request();
        let stream = futures_util::stream::iter(0..parts)
            .then(move |_| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, actix_web::error::PayloadError>(Bytes::from_static(b"x"))
            })
            .chain(futures_util::stream::pending());
        req.set_payload(actix_web::dev::Payload::from(Box::pin(stream) as actix_http::BoxedPayloadStream));
        req
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_or_trickles_is_refused_in_time() {
        // Part of a body, then nothing: refused once it has paused for BODY_IDLE.
        let mut stopped = trickled(3, std::time::Duration::from_millis(10));
        let err = read_body(&mut stopped, 1024, None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::RequestTimeout);
        // A byte every 9 s never pauses long enough, but takes longer than BODY_WHOLE in all.
        let mut trickle = trickled(100, std::time::Duration::from_secs(9));
        let started = tokio::time::Instant::now();
        let err = read_body(&mut trickle, 1024, None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::RequestTimeout);
        assert_eq!(started.elapsed(), BODY_WHOLE);
    }
}
