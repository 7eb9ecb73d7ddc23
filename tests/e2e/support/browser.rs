//! Headless Chromium for the tests that need a real browser: where it is, and running the node scripts under
//! `tests/dashboard` that drive it with playwright-core (no downloaded browser).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::host::repo_root;

/// Where Chromium (or Chrome) is looked for, first found first.
const BROWSERS: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/google-chrome"];

/// The Chromium executable: `METERLINE_TEST_CHROMIUM`, else the first of [`BROWSERS`] that exists.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("METERLINE_TEST_CHROMIUM").map(PathBuf::from) {
        assert!(path.is_file(), "METERLINE_TEST_CHROMIUM={} is not a file", path.display());
        return path;
    }
    BROWSERS.iter().map(PathBuf::from).find(|path| path.is_file()).unwrap_or_else(|| {
        panic!(
            "{} is missing: this test needs headless Chromium. `./scripts/test` installs it \
             (`scripts/install-test-deps chromium`: apt-get install chromium); \
             METERLINE_TEST_CHROMIUM may name another Chromium or Chrome executable",
            BROWSERS[0]
        )
    })
}

/// Runs `tests/dashboard/<script>` with `plan` (written to a file, its one argument) and returns the JSON it
/// prints; fails the test if it fails or takes longer than `budget`. Chromium's profile, caches and crash files
/// stay in a temporary folder.
pub async fn run_script(script: &str, plan: &Value, budget: Duration) -> Value {
    let dir = repo_root().join("tests/dashboard");
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && dir.join("node_modules/axe-core").is_dir(),
        "tests/dashboard/node_modules is missing: run `./scripts/install-test-deps dashboard` (npm ci)"
    );
    let plan_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(plan_file.path(), plan.to_string()).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .arg(plan_file.path())
        .current_dir(&dir)
        .env("HOME", temp.path())
        .env("XDG_CONFIG_HOME", temp.path().join("config"))
        .env("XDG_CACHE_HOME", temp.path().join("cache"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs: install Node.js 20 or later");
    let output = tokio::time::timeout(budget, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} finished within {budget:?}"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed ({}):\n{stderr}", output.status);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stderr}"))
}
