//! End-to-end tests: the real `handler` binary, started and spoken to the way the Azure Functions host does.
//!
//! One test binary (faster to link than one per file); each module is one concern.

mod api;
mod audit;
mod cli;
mod docs_page;
mod host_protocol;
mod hostile_http;
mod identity;
mod integration;
mod integration_store;
mod layout;
mod metering;
mod openapi;
mod outbox;
mod standalone;
mod store_contract;
mod support;
mod telemetry;
mod usage_api;
mod usage_rollup;
