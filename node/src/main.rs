//! The `cohort` binary: `cohort node`, `cohort up`, `cohort --version` (see `cli.rs`).

fn main() -> std::process::ExitCode {
    cohort::cli::main()
}
