//! Meterline: a metered, multi-tenant REST API that runs as an Azure Functions custom handler or on its own.
//!
//! Start at [`cli`] (the entry point) and [`startup`] (how the app is assembled); `ARCHITECTURE.md` has the map.

pub mod api;
pub mod auth;
pub mod azure;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod functions;
pub mod jobs;
pub mod lookups;
pub mod metering;
pub mod request;
pub mod resilience;
pub mod routes;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
