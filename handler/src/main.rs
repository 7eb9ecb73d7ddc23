//! The `handler` binary: everything lives in the library; see `meterline::cli`.

fn main() -> std::process::ExitCode {
    meterline::cli::main()
}
