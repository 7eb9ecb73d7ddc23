//! The SQL Server store: [`MssqlStore`] and its building blocks (connections and the pool, Entra ID tokens,
//! error classification, retry, and every T-SQL statement in `queries`).

pub mod connection;
pub mod errors;
pub(crate) mod integration;
pub mod queries;
pub mod retry;
mod store;
pub mod token;

pub use store::{MssqlStore, create_test_database};
