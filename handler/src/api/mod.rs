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
