//! Shared test support: the Functions host emulator and route-template matching.

pub mod host;
pub mod oidc;
pub mod routes;
pub mod stores;
