//! The `ferroserve` command: serve a model repository or a Flow, or send requests to a server.

// Generative models allocate and free large tensors at every step; glibc's malloc hands those
// back to the kernel each time, and the page faults of fresh pages cost more than the maths.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ferroserve::main_with(ferroserve::Executors::new())
}
