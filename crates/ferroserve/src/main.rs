//! The `ferroserve` command: serve a model repository or a Flow, or send requests to a server.

fn main() -> std::process::ExitCode {
    ferroserve::main_with(ferroserve::Executors::new())
}
