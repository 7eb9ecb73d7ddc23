//! The deployment layout: `host.json`, every `function.json`, and the documented settings agree with the code.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::host::{AppLayout, repo_root};

#[test]
fn every_function_json_matches_the_handler_registry() {
    let layout = AppLayout::from_repo();
    let on_disk: BTreeSet<_> = layout.functions.iter().map(|f| f.name.as_str()).collect();
    let in_code: BTreeSet<_> = meterline::functions::FUNCTIONS.iter().map(|f| f.name).collect();
    assert_eq!(on_disk, in_code, "function folders and the registry list the same functions");
    for def in meterline::functions::FUNCTIONS {
        let path = repo_root().join("functions").join(def.name).join("function.json");
        let committed: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(committed, meterline::functions::function_json(def), "{} differs from the registry", path.display());
    }
}

#[test]
fn http_functions_are_http_in_http_out_and_anonymous() {
    for function in AppLayout::from_repo().functions.iter().filter(|f| f.trigger_type() == "httpTrigger") {
        assert_eq!(
            function.bindings.len(),
            2,
            "{}: forwarding needs exactly one http in and one http out",
            function.name
        );
        assert_eq!(function.trigger()["authLevel"], "anonymous", "{}: the handler authenticates", function.name);
    }
}

#[test]
fn host_json_configures_the_custom_handler() {
    let host = AppLayout::from_repo().host_json;
    assert_eq!(host["version"], "2.0");
    let handler = &host["customHandler"];
    assert_eq!(handler["description"]["defaultExecutablePath"], "handler");
    assert_eq!(handler["description"]["arguments"], serde_json::json!(["serve"]));
    assert_eq!(handler["enableForwardingHttpRequest"], true);
    assert_eq!(handler["enableProxyingHttpRequest"], true);
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    assert!(host["functionTimeout"].is_string());
    assert!(host.get("httpWorker").is_none(), "the legacy section would change HTTP behaviour");
}

#[test]
fn every_setting_is_documented_in_the_example_settings_and_the_readme() {
    let example: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("local.settings.json.example")).unwrap()).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for setting in meterline::config::SETTINGS {
        let host_provided = setting.name.starts_with("FUNCTIONS_CUSTOMHANDLER")
            || setting.name.starts_with("FUNCTIONS_HTTPWORKER")
            || setting.name == "WEBSITE_INSTANCE_ID";
        if !host_provided {
            assert!(example["Values"].get(setting.name).is_some(), "{} missing from Values", setting.name);
        }
        let description = example["Descriptions"][setting.name].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{} has no description in local.settings.json.example", setting.name);
        assert!(readme.contains(&format!("`{}`", setting.name)), "{} missing from the README", setting.name);
    }
    assert!(example["Values"].as_object().unwrap().values().all(Value::is_string), "local.settings values are strings");
    assert_eq!(example["Values"]["FUNCTIONS_WORKER_RUNTIME"], "custom");
}
