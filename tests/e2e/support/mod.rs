//! Shared test support: the in-process app, the Functions host emulator, a standalone server, route-template
//! matching, the OpenID provider, local Azure endpoints and the store harness.

pub mod app;
pub mod browser;
pub mod endpoints;
pub mod host;
pub mod oidc;
pub mod proxy;
pub mod routes;
pub mod standalone;
pub mod stores;

/// Runs `handler dev-token ARGS` in `root` (local auth mode; creates the tenant in that root's store) and
/// returns the token it prints.
pub fn dev_token(root: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("dev-token")
        .args(args)
        .current_dir(root)
        .env_remove("METERLINE_AUTH_MODE")
        .output()
        .expect("handler runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("a token is text").trim().to_owned()
}
