//! The Azure Functions custom-handler protocol: which functions exist, how invocations are decoded, and how they are answered.
//!
//! HTTP functions are HTTP-in/HTTP-out, so the host forwards (or proxies) the raw request to the normal
//! router at its `/api/...` path. Every other invocation, and HTTP in the host's default mode, arrives as
//! `POST /{FunctionName}` with a JSON envelope; see `shared/docs/functions-host-protocol.md`.
//! [`FUNCTIONS`] is the code's view of the `functions/*/function.json` files; a test keeps both in step.

pub mod dispatch;
pub mod payload;

/// What triggers a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An HTTP route group. `route` is the Functions route template (after the `api/` prefix).
    Http { route: &'static str },
    /// A schedule (NCRONTAB with seconds) that runs a job.
    Timer { schedule: &'static str, job: crate::jobs::Job },
    /// A Service Bus queue consumer.
    ServiceBus { queue: &'static str, connection: &'static str },
}

/// One function folder of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionDef {
    /// The folder name; the host invokes `POST /{name}`.
    pub name: &'static str,
    /// The trigger binding's `name` (the key under `Data`).
    pub trigger_binding: &'static str,
    pub trigger: Trigger,
}

/// Name of the HTTP output binding of every HTTP function.
pub const HTTP_OUTPUT_BINDING: &str = "res";

/// Every function Meterline implements.
pub const FUNCTIONS: &[FunctionDef] = &[
    FunctionDef { name: "Health", trigger_binding: "req", trigger: Trigger::Http { route: "health/{*rest}" } },
    FunctionDef { name: "OpenApi", trigger_binding: "req", trigger: Trigger::Http { route: "openapi.json" } },
    FunctionDef { name: "Docs", trigger_binding: "req", trigger: Trigger::Http { route: "docs/{*rest}" } },
    FunctionDef { name: "Dashboard", trigger_binding: "req", trigger: Trigger::Http { route: "dashboard/{*rest}" } },
    FunctionDef { name: "Me", trigger_binding: "req", trigger: Trigger::Http { route: "v1/me" } },
    FunctionDef { name: "WhoAmI", trigger_binding: "req", trigger: Trigger::Http { route: "v1/whoami" } },
    FunctionDef { name: "Documents", trigger_binding: "req", trigger: Trigger::Http { route: "v1/documents/{*rest}" } },
    FunctionDef { name: "Plans", trigger_binding: "req", trigger: Trigger::Http { route: "v1/plans/{*rest}" } },
    FunctionDef { name: "Clients", trigger_binding: "req", trigger: Trigger::Http { route: "v1/clients/{*rest}" } },
    FunctionDef { name: "Usage", trigger_binding: "req", trigger: Trigger::Http { route: "v1/usage/{*rest}" } },
    FunctionDef { name: "Billing", trigger_binding: "req", trigger: Trigger::Http { route: "v1/billing/{*rest}" } },
    FunctionDef { name: "Tenants", trigger_binding: "req", trigger: Trigger::Http { route: "v1/tenants/{*rest}" } },
    FunctionDef { name: "Audit", trigger_binding: "req", trigger: Trigger::Http { route: "v1/audit-events/{*rest}" } },
    FunctionDef {
        name: "UsageRollup",
        trigger_binding: "timer",
        trigger: Trigger::Timer { schedule: "0 */5 * * * *", job: crate::jobs::Job::UsageRollup },
    },
    FunctionDef {
        name: "OutboxPublisher",
        trigger_binding: "timer",
        trigger: Trigger::Timer { schedule: "*/30 * * * * *", job: crate::jobs::Job::OutboxPublish },
    },
    FunctionDef {
        name: "IntegrationEvents",
        trigger_binding: "message",
        trigger: Trigger::ServiceBus { queue: "integration-events", connection: "ServiceBusConnection" },
    },
];

/// Finds a function by the name the host used (folder names are matched exactly, then ignoring case).
pub fn find(name: &str) -> Option<&'static FunctionDef> {
    FUNCTIONS.iter().find(|f| f.name == name).or_else(|| FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name)))
}

/// The schedule and job of every timer function: what standalone `serve` runs in-process (`jobs::schedule`).
pub fn timers() -> impl Iterator<Item = (&'static str, crate::jobs::Job)> {
    FUNCTIONS.iter().filter_map(|f| match f.trigger {
        Trigger::Timer { schedule, job } => Some((schedule, job)),
        _ => None,
    })
}

/// The `function.json` document for `def`, exactly as committed under `functions/<name>/`.
pub fn function_json(def: &FunctionDef) -> serde_json::Value {
    use serde_json::json;
    let bindings = match def.trigger {
        Trigger::Http { route } => json!([
            {
                "type": "httpTrigger",
                "direction": "in",
                "name": def.trigger_binding,
                "authLevel": "anonymous",
                "methods": ["get", "post", "put", "patch", "delete", "head", "options"],
                "route": route
            },
            { "type": "http", "direction": "out", "name": HTTP_OUTPUT_BINDING }
        ]),
        Trigger::Timer { schedule, .. } => json!([
            {
                "type": "timerTrigger",
                "direction": "in",
                "name": def.trigger_binding,
                "schedule": schedule,
                "useMonitor": true,
                "runOnStartup": false
            }
        ]),
        Trigger::ServiceBus { queue, connection } => json!([
            {
                "type": "serviceBusTrigger",
                "direction": "in",
                "name": def.trigger_binding,
                "queueName": queue,
                "connection": connection
            }
        ]),
    };
    json!({ "bindings": bindings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found_ignoring_case() {
        for f in FUNCTIONS {
            assert_eq!(FUNCTIONS.iter().filter(|g| g.name.eq_ignore_ascii_case(f.name)).count(), 1);
            assert_eq!(find(&f.name.to_ascii_lowercase()).map(|d| d.name), Some(f.name));
        }
        assert!(find("NoSuchFunction").is_none());
    }

    #[test]
    fn every_registered_timer_schedule_parses() {
        for def in FUNCTIONS {
            if let Trigger::Timer { schedule, .. } = def.trigger {
                crate::jobs::schedule::Schedule::parse(schedule).unwrap_or_else(|e| panic!("{}: {e}", def.name));
            }
        }
    }
}
