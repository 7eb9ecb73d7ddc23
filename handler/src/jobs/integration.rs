//! The `IntegrationEvents` Service Bus consumer: decodes CloudEvents 1.0 messages from other systems.

use serde::Deserialize;

use crate::error::AppError;
use crate::functions::payload::{InvocationResult, ServiceBusMessage};
use crate::state::AppState;

/// The CloudEvents 1.0 attributes every integration message must carry.
#[derive(Debug, Deserialize)]
struct CloudEventHead {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
}

/// Decodes one message. This build applies no event types yet: it reports what it received and completes.
pub async fn consume(_state: &AppState, message: &ServiceBusMessage) -> Result<InvocationResult, AppError> {
    let delivery = message.delivery_count.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let message_id = message.message_id.as_deref().unwrap_or("(none)");
    let line = match serde_json::from_str::<CloudEventHead>(&message.body) {
        Ok(head) if head.specversion == "1.0" => format!(
            "IntegrationEvents: message {message_id} delivery {delivery}: CloudEvent type={} id={} source={} ({} bytes); not applied: no consumer for this type in this build",
            head.event_type,
            head.id,
            head.source,
            message.body.len()
        ),
        Ok(head) => format!(
            "IntegrationEvents: message {message_id} delivery {delivery}: unsupported CloudEvents specversion {:?}",
            head.specversion
        ),
        Err(err) => format!("IntegrationEvents: message {message_id} delivery {delivery}: not a CloudEvent: {err}"),
    };
    tracing::info!(message_id, delivery_count = message.delivery_count, "{line}");
    Ok(InvocationResult::default().with_log(line))
}
