//! Telemetry export settings: OTLP to a collector, straight to Application Insights, or off, chosen by
//! `METERLINE_TELEMETRY` (`auto` picks whichever endpoint is configured).

use std::time::Duration;

use secrecy::SecretString;

use super::{ConfigError, parse_number};

/// Where OpenTelemetry traces and metrics go.
#[derive(Debug, Clone)]
pub enum TelemetryExport {
    /// Nothing is exported; no exporter, thread or instrument exists.
    Off,
    /// OTLP over HTTP (protobuf) to a collector; `endpoint` is the base URL.
    Otlp { endpoint: String },
    /// Straight to Application Insights' ingestion endpoint named by the connection string.
    AppInsights { connection_string: SecretString },
}

/// Telemetry export settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub export: TelemetryExport,
    pub service_name: String,
    pub metric_interval: Duration,
}

/// Reads `METERLINE_TELEMETRY` and the endpoint settings it chooses between.
pub(super) fn telemetry_config(get: &dyn Fn(&str) -> Option<String>) -> Result<TelemetryConfig, ConfigError> {
    let otlp = get("OTEL_EXPORTER_OTLP_ENDPOINT");
    let app_insights = get("APPLICATIONINSIGHTS_CONNECTION_STRING");
    let otlp_export = |endpoint: Option<String>| -> Result<TelemetryExport, ConfigError> {
        let endpoint = endpoint
            .ok_or_else(|| ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", "required when METERLINE_TELEMETRY=otlp"))?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::new(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("expected an http(s) URL, got {endpoint:?}"),
            ));
        }
        Ok(TelemetryExport::Otlp { endpoint: endpoint.trim_end_matches('/').to_owned() })
    };
    let app_insights_export = |connection: Option<String>| -> Result<TelemetryExport, ConfigError> {
        let connection = connection.ok_or_else(|| {
            ConfigError::new("APPLICATIONINSIGHTS_CONNECTION_STRING", "required when METERLINE_TELEMETRY=appinsights")
        })?;
        if !connection.split(';').any(|part| part.trim().to_ascii_lowercase().starts_with("instrumentationkey=")) {
            return Err(ConfigError::new("APPLICATIONINSIGHTS_CONNECTION_STRING", "has no InstrumentationKey"));
        }
        Ok(TelemetryExport::AppInsights { connection_string: SecretString::from(connection) })
    };
    let export = match get("METERLINE_TELEMETRY").as_deref().unwrap_or("auto") {
        "off" => TelemetryExport::Off,
        "otlp" => otlp_export(otlp)?,
        "appinsights" => app_insights_export(app_insights)?,
        "auto" if otlp.is_some() => otlp_export(otlp)?,
        "auto" if app_insights.is_some() => app_insights_export(app_insights)?,
        "auto" => TelemetryExport::Off,
        other => {
            return Err(ConfigError::new(
                "METERLINE_TELEMETRY",
                format!("expected `auto`, `otlp`, `appinsights` or `off`, got {other:?}"),
            ));
        }
    };
    let interval = parse_number(
        "METERLINE_TELEMETRY_METRIC_INTERVAL_SECS",
        get("METERLINE_TELEMETRY_METRIC_INTERVAL_SECS"),
        60,
        1..=3_600,
    )?;
    Ok(TelemetryConfig {
        export,
        service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "meterline".into()),
        metric_interval: Duration::from_secs(interval as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    #[test]
    fn telemetry_is_off_unless_an_endpoint_is_configured() {
        assert!(matches!(config(&[]).unwrap().telemetry.export, TelemetryExport::Off));
        let key = "InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=https://x/";
        let both = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", key),
        ])
        .unwrap();
        assert!(
            matches!(both.telemetry.export, TelemetryExport::Otlp { ref endpoint } if endpoint == "http://127.0.0.1:4318"),
            "auto prefers an explicit collector"
        );
        let azure = config(&[("APPLICATIONINSIGHTS_CONNECTION_STRING", key)]).unwrap();
        assert!(matches!(azure.telemetry.export, TelemetryExport::AppInsights { .. }));
        assert!(!format!("{azure:?}").contains("00000000-0000-0000-0000-000000000001"), "the key is redacted");
        let off = config(&[("METERLINE_TELEMETRY", "off"), ("APPLICATIONINSIGHTS_CONNECTION_STRING", key)]).unwrap();
        assert!(matches!(off.telemetry.export, TelemetryExport::Off));
        assert_eq!(off.telemetry.service_name, "meterline");
    }
}
