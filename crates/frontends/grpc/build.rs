//! Compiles the protocol's .proto files with protox, a protobuf compiler in Rust, so building
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "grpc_service.proto",
            "model_config.proto",
            "documents.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Tensor data stays in reference-counted buffers: no copy from the wire into the runtime.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
