//! The `ferroserve` command: serve a model repository, or send an inference request to a server.

mod bench;
mod cli;
mod grpc_client;
mod infer;
mod logging;
mod serve;
mod tensors;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(args),
        cli::Command::Infer(args) => infer::run(args),
        cli::Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable sentence (with its causes) for a person at a terminal.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
