//! The `pacer` binary: parse arguments, run, exit with the verdict's code.

fn main() -> std::process::ExitCode {
    pacer_cli::main_from_env()
}
