//! A real generated client: `tests/client/run.mjs` generates TypeScript types from the document a standalone
//! `handler` serves (openapi-typescript), type-checks the scenario against them (tsc) and runs it with
//! openapi-fetch: create, list across pages via nextLink, conditional update, idempotent replay, a validation
//! error and a 429 read through the typed problem model, Retry-After honoured. The packages are pinned in
//! `tests/client/package-lock.json` and installed by `scripts/install-test-deps client`.

use tokio::process::Command;

use crate::support::dev_token;
use crate::support::host::repo_root;
use crate::support::standalone::Standalone;

/// The directory of the tenant the scenario moves onto a plan with a tiny rate limit.
const DIR_LIMITED: &str = "aaaaaaaa-0000-0000-0000-0000000000aa";
const DIR_OPS: &str = "0b500000-0000-0000-0000-0000000000ff";
const INSTALL: &str = "run `scripts/install-test-deps client`";

#[tokio::test]
async fn a_client_generated_from_the_served_document_runs_the_scenario() {
    let client_dir = repo_root().join("tests/client");
    let node = Command::new("node").arg("--version").output().await;
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is not runnable ({node:?}): install Node.js 20 or later, then {INSTALL}"
    );
    for package in ["openapi-typescript", "openapi-fetch", "typescript", "@types/node"] {
        let manifest = client_dir.join("node_modules").join(package).join("package.json");
        assert!(manifest.is_file(), "{} is missing: {INSTALL}", manifest.display());
    }

    // Tokens first: `dev-token` creates the signing key and the tenants the server then reads.
    let root = tempfile::tempdir().unwrap();
    let user = dev_token(root.path(), &["--roles", "Documents.Read,Documents.Write"]);
    let admin = dev_token(root.path(), &["--tenant", DIR_OPS, "--roles", "Platform.Admin", "--app-id", "ops"]);
    let limited = dev_token(root.path(), &["--tenant", DIR_LIMITED, "--roles", "Documents.Read"]);
    let server = Standalone::start_in(root).await;

    let output = Command::new("node")
        .arg(client_dir.join("run.mjs"))
        .current_dir(&client_dir)
        .env("METERLINE_BASE_URL", &server.base)
        .env("METERLINE_TOKEN", &user)
        .env("METERLINE_ADMIN_TOKEN", &admin)
        .env("METERLINE_LIMITED_TOKEN", &limited)
        .env("METERLINE_LIMITED_DIRECTORY", DIR_LIMITED)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("scenario passed"),
        "the generated-client scenario failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        output.status,
        server.log()
    );
}
