use std::process::ExitCode;

fn main() -> ExitCode {
    shroud::cli::main()
}
