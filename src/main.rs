//! The `carwatch` binary: parse arguments, set up logging, run the subcommand.
//! Everything else is in the library; see `lib.rs` for a tour.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
