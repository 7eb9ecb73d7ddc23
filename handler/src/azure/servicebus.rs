//! Sends messages to a Service Bus queue or topic through the documented REST API on the `azure_core` pipeline.
//!
//! `POST https://{namespace}/{entity}/messages` with the message as the body, its `MessageId` (and `Label`) in the
//! `BrokerProperties` header; Service Bus answers `201 Created` once the message is stored. Authentication is an
//! Entra ID bearer token for `https://servicebus.azure.net/.default` (managed identity, the default) or, as a
//! fallback, a SAS token signed with the key of a connection string. The pipeline retries 408/429/5xx and
//! transport failures a few times with exponential backoff; each try is bounded by the transport's timeout.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::policies::Policy;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    ClientOptions, Context, ExponentialRetryOptions, Method, Pipeline, PipelineSendOptions, Request, RetryOptions,
    Transport, Url,
};
use secrecy::{ExposeSecret, SecretString};

use super::SecretCell;

/// The Entra ID scope of Service Bus data-plane operations.
pub const SERVICE_BUS_SCOPE: &str = "https://servicebus.azure.net/.default";

/// How the sender authenticates.
#[derive(Debug, Clone)]
pub enum ServiceBusAuth {
    /// An Entra ID token credential (the managed identity) for `namespace`, e.g. `contoso.servicebus.windows.net`.
    Entra { namespace: String, credential: Arc<dyn TokenCredential> },
    /// A connection string `Endpoint=sb://…/;SharedAccessKeyName=…;SharedAccessKey=…`, read on every send so a
    /// rotated key (Key Vault refresh) takes effect at once.
    Sas { connection_string: SecretCell },
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Service Bus `MessageId` (duplicate detection keys on it).
    pub message_id: String,
    /// Service Bus `Label` (subject).
    pub label: Option<String>,
    pub content_type: String,
    pub body: String,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
}

/// A sender for one queue or topic.
#[derive(Debug)]
pub struct ServiceBusSender {
    auth: ServiceBusAuth,
    entity: String,
    pipeline: Pipeline,
}

/// The parts of a SAS connection string the sender needs.
#[derive(Debug, PartialEq, Eq)]
struct SasParts {
    /// `host[:port]` from `Endpoint=sb://host/`.
    namespace: String,
    key_name: String,
    key: String,
}

/// Whether `raw` is a SAS connection string the sender can use; the error says what it lacks.
pub fn check_connection_string(raw: &str) -> Result<(), String> {
    parse_connection_string(raw).map(drop)
}

fn parse_connection_string(raw: &str) -> Result<SasParts, String> {
    let mut endpoint = None;
    let (mut key_name, mut key) = (None, None);
    for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "endpoint" => endpoint = Some(value.trim().to_owned()),
            "sharedaccesskeyname" => key_name = Some(value.trim().to_owned()),
            // The key is base64 and may end in '='; split_once kept everything after the first '='.
            "sharedaccesskey" => key = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let endpoint = endpoint.ok_or("the connection string has no Endpoint")?;
    let namespace =
        endpoint.split_once("://").map_or(endpoint.as_str(), |(_, rest)| rest).trim_end_matches('/').to_owned();
    if namespace.is_empty() {
        return Err("the connection string's Endpoint has no host".into());
    }
    Ok(SasParts {
        namespace,
        key_name: key_name.ok_or("the connection string has no SharedAccessKeyName")?,
        key: key.ok_or("the connection string has no SharedAccessKey")?,
    })
}

fn encode(raw: &str) -> String {
    form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}

/// A SAS token for `resource_uri` valid until `expiry` (unix seconds):
/// `SharedAccessSignature sr=<uri>&sig=<base64 HMAC-SHA256(key, uri + "\n" + expiry)>&se=<expiry>&skn=<key name>`.
pub fn sas_token(resource_uri: &str, key_name: &str, key: &str, expiry: i64) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let uri = encode(resource_uri);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{uri}\n{expiry}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("SharedAccessSignature sr={uri}&sig={}&se={expiry}&skn={}", encode(&signature), encode(key_name))
}

impl ServiceBusSender {
    /// A sender to `entity` (a queue or topic name); `timeout` bounds each HTTP try.
    pub fn new(auth: ServiceBusAuth, entity: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::with_http_client(auth, entity, reqwest_azure::Client::builder().timeout(timeout).build()?)
    }

    /// [`new`](Self::new) over a given HTTP client (its timeout bounds each try): the seam tests use to trust a
    /// test certificate authority without changing the process's trust store.
    pub fn with_http_client(auth: ServiceBusAuth, entity: &str, http: reqwest_azure::Client) -> anyhow::Result<Self> {
        if let ServiceBusAuth::Sas { connection_string } = &auth {
            parse_connection_string(connection_string.get().expose_secret()).map_err(anyhow::Error::msg)?;
        }
        let options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                max_retries: 3,
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_delay: azure_core::time::Duration::seconds(5),
                max_total_elapsed: azure_core::time::Duration::seconds(30),
            }),
            ..Default::default()
        };
        let per_try: Vec<Arc<dyn Policy>> = match &auth {
            ServiceBusAuth::Entra { credential, .. } => {
                vec![Arc::new(BearerTokenAuthorizationPolicy::new(credential.clone(), [SERVICE_BUS_SCOPE]))]
            }
            ServiceBusAuth::Sas { .. } => Vec::new(),
        };
        let pipeline =
            Pipeline::new(Some("meterline"), Some(env!("CARGO_PKG_VERSION")), options, Vec::new(), per_try, None);
        Ok(Self { auth, entity: entity.trim_matches('/').to_owned(), pipeline })
    }

    /// Sends one message; `Ok` only after Service Bus answered `201 Created`. `now_unix` dates the SAS token.
    pub async fn send(&self, message: &OutgoingMessage, now_unix: i64) -> Result<(), SendError> {
        let (namespace, sas) = match &self.auth {
            ServiceBusAuth::Entra { namespace, .. } => (namespace.clone(), None),
            ServiceBusAuth::Sas { connection_string } => {
                let parts = parse_connection_string(connection_string.get().expose_secret())
                    .map_err(|message| SendError { message })?;
                (parts.namespace.clone(), Some(parts))
            }
        };
        let entity_url = format!("https://{namespace}/{}", self.entity);
        let url = Url::parse(&format!("{entity_url}/messages"))
            .map_err(|e| SendError { message: format!("bad Service Bus URL {entity_url:?}: {e}") })?;
        let mut request = Request::new(url, Method::Post);
        let mut broker = serde_json::json!({ "MessageId": message.message_id });
        if let Some(label) = &message.label {
            broker["Label"] = serde_json::Value::String(label.clone());
        }
        request.insert_header("brokerproperties", broker.to_string());
        request.insert_header("content-type", message.content_type.clone());
        if let Some(parts) = sas {
            let token = sas_token(&entity_url, &parts.key_name, &parts.key, now_unix + 3600);
            let token = SecretString::from(token);
            request.insert_header("authorization", token.expose_secret().to_owned());
        }
        request.set_body(message.body.clone().into_bytes());
        let options = PipelineSendOptions { skip_checks: true, ..Default::default() };
        let response = self
            .pipeline
            .send(&Context::new(), &mut request, Some(options))
            .await
            .map_err(|e| SendError { message: format!("sending to {entity_url}: {e}") })?;
        let status = u16::from(response.status());
        if status == 201 {
            return Ok(());
        }
        let body = String::from_utf8_lossy(response.body().as_ref()).chars().take(300).collect::<String>();
        Err(SendError { message: format!("Service Bus answered {status} for {entity_url}: {body}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_give_namespace_key_name_and_key() {
        let parts = parse_connection_string(
            "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc+def=;EntityPath=x",
        )
        .unwrap();
        assert_eq!(
            parts,
            SasParts {
                namespace: "contoso.servicebus.windows.net".into(),
                key_name: "send".into(),
                key: "abc+def=".into()
            }
        );
        assert!(parse_connection_string("SharedAccessKeyName=a;SharedAccessKey=b").is_err());
        assert!(parse_connection_string("Endpoint=sb://x/;SharedAccessKey=b").is_err());
    }

    #[test]
    fn sas_tokens_sign_the_encoded_uri_and_expiry() {
        let token = sas_token("https://contoso.servicebus.windows.net/events", "send", "secret", 1_800_000_000);
        assert!(
            token.starts_with("SharedAccessSignature sr=https%3A%2F%2Fcontoso.servicebus.windows.net%2Fevents&sig=")
        );
        assert!(token.ends_with("&se=1800000000&skn=send"));
        // Computed independently (Python's hmac and base64) for the same inputs.
        assert!(token.contains("&sig=XZKv1UvOy3XnP9Pj7JVl2K8iESO3zxUHTAGNl2LRVg4%3D&"), "{token}");
        assert_ne!(token, sas_token("https://contoso.servicebus.windows.net/events", "send", "other", 1_800_000_000));
    }
}
