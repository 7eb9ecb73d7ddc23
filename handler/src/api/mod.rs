//! The HTTP API's shared conventions (written down in `docs/api-design.md`): ETags and conditional requests,
//! sealed keyset cursors, idempotent creation, validation errors, list envelopes, deprecation headers, and the
//! route table that says which operation a request is.
//!
//! Routes in `routes/` use these pieces so that every resource behaves the same way.

pub mod body;
pub mod conditional;
pub mod contract;
pub mod cors;
pub mod cursor;
pub mod deprecation;
pub mod gate;
pub mod head;
pub mod http10;
pub mod idempotency;
pub mod list;
pub mod operations;
pub mod page;
pub mod search;
pub mod validation;

use actix_web::http::header::{self, HeaderName};

/// The header fields every `/api/v1` answer carries, a problem's and a preflight's too: tenant data is never kept
/// by a shared cache and is revalidated before a private one reuses it (the ETag answers 304), as Azure's own APIs
/// say; and no browser reads a JSON answer as anything else.
pub const V1_ANSWER_FIELDS: [(HeaderName, &str); 2] =
    [(header::CACHE_CONTROL, "private, no-cache"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")];
