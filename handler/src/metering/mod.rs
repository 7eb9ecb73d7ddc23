//! Metering on the request path: one usage record per request, rate limits, monthly quotas, RateLimit headers.
//!
//! Two middleware stages wrap every `/api/v1` route, configured in one place (`routes::configure`):
//! [`stage::record`] outside authentication, so every request (a 401 too) yields exactly one usage
//! event, written durably before the response leaves, with the request's audit event ([`audit`]) in the same
//! transaction when it changed state or was refused; and [`stage::limit`] after it, which applies the
//! caller's plan: a GCRA rate limit per (tenant, client), kept in the store so scaled-out processes share it,
//! and the tenant's monthly quota, spent from this process's quota lease ([`leases`]) whose grants the store
//! decides. A new endpoint gets authentication,
//! limits, metering and audit by having an operation id, an `Authorized<P>` permission and an entry in
//! [`costs::COSTS`]; if it changes state, it passes its [`ledger::ledger`] (usage and audit event, with an
//! [`audit::AuditNote`] of what changed) to the store write, which commits them in its transaction.

pub mod abandoned;
pub mod audit;
pub mod costs;
pub mod headers;
pub mod leases;
pub mod ledger;
pub mod period;
pub mod recorder;
pub mod refusals;
pub mod stage;
