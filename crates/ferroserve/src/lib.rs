//! The `ferroserve` command as a library, so a program can add its own executors and still be
//! the whole `ferroserve` binary (`serve`, `run`, `infer`, `bench`):
//!
//! ```no_run
//! use ferroserve::{Document, Executor, ExecutorError, Executors, Parameters};
//!
//! struct UpperCase;
//!
//! impl Executor for UpperCase {
//!     fn handle(&self, _: &str, mut docs: Vec<Document>, _: &Parameters)
//!         -> Result<Vec<Document>, ExecutorError> {
//!         for d in &mut docs {
//!             d.text = d.text.take().map(|t| t.to_uppercase());
//!         }
//!         Ok(docs)
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let mut executors = Executors::new();
//!     executors.register("UpperCase", |_| Ok(Box::new(UpperCase)));
//!     // `my-binary run flow.yml` can now say `uses: UpperCase`.
//!     ferroserve::main_with(executors)
//! }
//! ```

mod archive;
mod bench;
mod cli;
mod client;
mod export;
mod grpc_client;
mod infer;
mod logging;
mod ray;
mod run;
mod serve;
mod tensors;
mod torchserve;

use clap::Parser;
pub use ferroserve_flow::{
    DeploymentHandle, Document, Executor, ExecutorError, Executors, Handles, Init, Parameters,
};

/// Parses the command line and runs the command, with `executors` available to
/// `ferroserve run`'s YAML. Returns the process's exit code.
///
/// Call it first thing in `main`: it sets candle's threading environment variables
/// ([`ferroserve_backend_candle::configure_cpu_threads`]), which is only sound before any other
/// thread starts.
pub fn main_with(executors: Executors) -> std::process::ExitCode {
    // Environment variables, so before any thread starts.
    ferroserve_backend_candle::configure_cpu_threads();
    let cli = cli::Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(*args),
        cli::Command::Run(args) => run::run(*args, executors),
        cli::Command::Client(args) => client::run(args),
        cli::Command::Infer(args) => infer::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::Archive(args) => archive::run(args),
        cli::Command::Torchserve(args) => torchserve::run(args),
        cli::Command::Export(cli::ExportCommand::Kubernetes(args)) => export::kubernetes(*args),
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
