//! A standalone `handler serve` (no Functions host) on a free loopback port, in its own working directory.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::host::free_port;

/// The real `handler` binary serving the API directly; killed on drop. Its output goes to `server.log` in its
/// working directory (see [`Standalone::log`]).
pub struct Standalone {
    child: Child,
    pub base: String,
    pub root: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Standalone {
    /// In a fresh temporary directory.
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap()).await
    }

    /// In `root` (which may already hold a store and a signing key, e.g. from `support::dev_token`), with none of
    /// the caller's `METERLINE_*` or `FUNCTIONS_*` settings; ready once `GET /api/health` answers 200.
    pub async fn start_in(root: tempfile::TempDir) -> Self {
        let port = free_port();
        let log = std::fs::File::create(root.path().join("server.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
        command.arg("serve").current_dir(root.path()).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("METERLINE_") || k.starts_with("FUNCTIONS_")) {
            command.env_remove(key);
        }
        command.env("METERLINE_PORT", port.to_string()).env("METERLINE_WORKERS", "1").kill_on_drop(true);
        let mut child = command.spawn().expect("handler starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/api/health")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "the standalone server exited before it was ready");
            assert!(Instant::now() < deadline, "the standalone server was not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Standalone { child, base, root }
    }

    /// What the server has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }
}
