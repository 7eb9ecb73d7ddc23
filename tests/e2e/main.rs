//! End-to-end tests. The API, its policies, metering, usage and audit run in process: `startup::app` served by
//! `support::app::TestApp` over a fresh SQLite store, with a manual clock and deterministic ids. What needs a
//! process starts the real `handler` binary and speaks to it the way the Azure Functions host does: the host
//! protocol, startup and exit codes, SIGKILL durability, two processes on one store, Key Vault and the managed
//! identity, telemetry export, hostile raw HTTP, the docs page and the usage dashboard in headless Chromium and a
//! client generated from the served OpenAPI document.
//!
//! One test binary (faster to link than one per file); each module is one concern.

mod abandoned;
mod api;
mod audit;
mod cli;
mod cors;
mod dashboard;
mod docs_page;
mod faults;
mod generated_client;
mod health;
mod host_protocol;
mod hostile_http;
mod identity;
mod integration;
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
