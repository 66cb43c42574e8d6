//! `ferroserve run FILE.yml`: load a Deployment or a Flow, serve it over HTTP, and shut down
//! gracefully. A Ray Serve application (`module:attribute`, or a config file with
//! `applications:`) goes to [`crate::ray`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ferroserve_flow::spec::FlowSpec;
use ferroserve_flow::{Executors, Flow};
use ferroserve_http::HttpOptions;
use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::serve::{bind, drain, shutdown_signal, start_runtime};

/// HTTP port of `ferroserve run` when neither the file nor `--port` says.
const DEFAULT_PORT: u16 = 8080;
/// gRPC port of `ferroserve run` when neither the file nor `--grpc-port` says.
const DEFAULT_GRPC_PORT: u16 = 8081;

/// Checks the file, builds every executor (loading model folders), then serves until SIGINT or
/// SIGTERM.
pub fn run(args: RunArgs, mut executors: Executors) -> anyhow::Result<()> {
    if let Some(apps) = crate::ray::target(&args)? {
        return crate::ray::run(args, apps);
    }
    if !args.args.is_empty() {
        anyhow::bail!(
            "{}: KEY=VALUE arguments are for Ray Serve application builders (module:builder)",
            args.target
        );
    }
    let file = PathBuf::from(&args.target);
    let host = args.host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let spec = FlowSpec::load(&file)?;
    let defaults = ferroserve_flow::PythonOptions::default();
    executors.set_python(ferroserve_flow::PythonOptions {
        python: args.runtime.python.clone().unwrap_or(defaults.python),
        install_requirements: args.runtime.install_requirements,
    });
    let runtime = start_runtime(&args.runtime)?;
    let protocols = spec.gateway.protocols();
    let http_port = protocols.iter().any(|p| p == "http").then(|| {
        args.port
            .or(spec.gateway.port_of("http"))
            .unwrap_or(DEFAULT_PORT)
    });
    let grpc_port = protocols.iter().any(|p| p == "grpc").then(|| {
        args.grpc_port
            .or(spec.gateway.port_of("grpc"))
            .unwrap_or(DEFAULT_GRPC_PORT)
    });
    let limits = args.runtime.connections.limits()?;
    let flow = Arc::new(
        Flow::build(spec, &executors, runtime.clone())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}", file.display()))?,
    );
    tracing::info!(executors = %flow.names().join(" "), "flow ready");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async move {
            let (stop, stopped) = watch::channel(false);
            let until_stopped = |mut rx: watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let mut servers = Vec::new();
            if let Some(port) = http_port {
                let listener = bind(SocketAddr::new(host, port), "HTTP").await?;
                let app = ferroserve_http::flow_router(
                    runtime.clone(),
                    flow.clone(),
                    HttpOptions {
                        max_request_bytes: args.runtime.max_request_bytes,
                        management_token: None,
                        repository_changes_without_token: host.is_loopback(),
                        console: !args.runtime.no_console,
                    },
                );
                servers.push(tokio::spawn(ferroserve_listen::serve(
                    listener,
                    app,
                    limits.clone(),
                    until_stopped(stopped.clone()),
                )));
            }
            if let Some(port) = grpc_port {
                let listener = bind(SocketAddr::new(host, port), "gRPC").await?;
                let (runtime, flow, stop) = (
                    runtime.clone(),
                    flow.clone(),
                    until_stopped(stopped.clone()),
                );
                let options = ferroserve_grpc::GrpcOptions {
                    max_message_bytes: args.runtime.max_request_bytes,
                    management_token: None,
                    repository_changes_without_token: host.is_loopback(),
                    limits: limits.clone(),
                };
                servers.push(tokio::spawn(ferroserve_grpc::serve_with(
                    listener,
                    runtime,
                    Some(flow),
                    options,
                    stop,
                )));
            }
            tracing::info!("server ready");
            shutdown_signal().await;
            drain(stop, servers, runtime, &args.runtime).await
        })
}
