//! The OpenAPI document as a contract: a committed snapshot, and every route declared through utoipa.
//!
//! Run with `UPDATE_SNAPSHOTS=1` to accept an intended change, then review the diff of the snapshot.

use crate::support::host::repo_root;

#[test]
fn the_openapi_document_matches_its_snapshot() {
    // Through serde_json::Value, whose maps sort their keys: utoipa keeps extensions in a HashMap.
    let value = serde_json::to_value(meterline::routes::openapi()).unwrap();
    let doc = serde_json::to_string_pretty(&value).unwrap() + "\n";
    let path = repo_root().join("tests/e2e/snapshots/openapi.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == doc,
        "the OpenAPI document changed; if intended, run `UPDATE_SNAPSHOTS=1 cargo test --test e2e openapi` and commit \
         tests/e2e/snapshots/openapi.json"
    );
}

#[test]
fn every_operation_has_an_id_a_permission_and_error_responses() {
    let doc = serde_json::to_value(meterline::routes::openapi()).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            assert!(op["x-meterline-permission"].is_string(), "{id}");
            // A parameter is absent or has a value: none admits `null`, which generated clients turn into
            // unions (`ListClientsStatusType0`) for no value a query string or header can carry.
            for parameter in op["parameters"].as_array().into_iter().flatten() {
                let schema = parameter["schema"].to_string();
                assert!(!schema.contains("\"null\""), "{id}: parameter {} admits null: {schema}", parameter["name"]);
            }
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/api/v1/") {
                let idempotent =
                    op["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
                if idempotent && let Some(created) = responses.get("201") {
                    assert!(
                        created["headers"]["Idempotency-Replayed"].is_object(),
                        "{id} 201 declares Idempotency-Replayed"
                    );
                }
                for status in ["401", "403"] {
                    assert!(responses.contains_key(status), "{id} documents no {status}");
                }
                for (status, response) in responses.iter().filter(|(s, _)| s.starts_with('4') || s.starts_with('5')) {
                    // A shared problem response is a reference into the components.
                    let response = match response["$ref"].as_str() {
                        Some(at) => {
                            doc.pointer(at.trim_start_matches('#')).unwrap_or_else(|| panic!("{id}: {at} resolves"))
                        }
                        None => response,
                    };
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{id} {status} is documented as problem+json"
                    );
                    // Every problem carries these, inline responses as much as the shared ones.
                    for header in ["x-request-id", "x-ms-error-code"] {
                        assert!(response["headers"][header].is_object(), "{id} {status} declares {header}");
                    }
                    let needs = match status.as_str() {
                        "401" | "403" => Some("WWW-Authenticate"),
                        "412" => Some("ETag"),
                        _ => None,
                    };
                    if let Some(header) = needs {
                        assert!(response["headers"][header].is_object(), "{id} {status} declares {header}");
                    }
                }
            }
        }
    }
}

/// Every handler attribute in routes/ is paired with `#[utoipa::path]`, so no route escapes the document.
#[test]
fn every_route_handler_is_declared_in_the_openapi_document() {
    // Every source file under routes/, its folders' too.
    let mut files = Vec::new();
    let mut folders = vec![repo_root().join("handler/src/routes")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("documents/mod.rs")), "the walk reaches the folders: {files:?}");
    for path in files {
        let source = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = source.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_route =
                ["#[get(", "#[post(", "#[put(", "#[patch(", "#[delete("].iter().any(|m| trimmed.starts_with(m));
            if !is_route {
                continue;
            }
            let window = lines[i.saturating_sub(40)..i].join("\n");
            let declared = window
                .rfind("#[utoipa::path")
                .is_some_and(|at| !window[at..].contains("\nasync fn") && !window[at..].contains("\npub async fn"));
            assert!(declared, "{}:{}: {trimmed} has no #[utoipa::path] right before it", path.display(), i + 1);
        }
    }
}
