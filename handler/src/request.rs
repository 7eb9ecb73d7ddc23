//! What every layer may know about the request being served, kept low so none has to reach up for it: its id
//! (a task-local the telemetry middleware sets around the whole request) and the header names several layers
//! share.

/// Header the Functions host puts on every invocation; forwarded onto default-mode HTTP requests and logged.
pub const INVOCATION_ID_HEADER: &str = "x-azure-functions-invocationid";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `future` (a request's handling) with `id` as its request id.
pub fn scope<F: Future>(id: String, future: F) -> tokio::task::futures::TaskLocalFuture<String, F> {
    REQUEST_ID.scope(id, future)
}

/// The id of the request being served on this task, for error bodies and usage records.
pub fn current_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}
