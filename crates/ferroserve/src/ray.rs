//! `ferroserve run module:attribute` (and `ferroserve run config.yaml` with `applications:`):
//! Ray Serve applications as their users wrote them, served over HTTP until SIGINT or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferroserve_flow::ray::{AppSource, RayApps, RayOptions, ServeConfig};
use ferroserve_http::HttpOptions;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::serve::{bind, drain, shutdown_signal, start_runtime};

/// Ray Serve's HTTP port.
const DEFAULT_PORT: u16 = 8000;

/// What `ferroserve run` was given, when it is a Ray Serve application.
pub struct Target {
    sources: Vec<AppSource>,
    host: Option<IpAddr>,
    port: Option<u16>,
}

/// The Ray Serve applications `args.target` names: a config file with `applications:`, or
/// `module:attribute` (anything that is not a file and has a colon); `None` for a Flow file.
pub fn target(args: &RunArgs) -> anyhow::Result<Option<Target>> {
    let path = Path::new(&args.target);
    if path.is_file() {
        if !ServeConfig::is_serve_config(path) {
            return Ok(None);
        }
        if !args.args.is_empty() {
            anyhow::bail!(
                "{}: KEY=VALUE arguments are for `module:builder`; a config file gives each application its args",
                path.display()
            );
        }
        let config = ServeConfig::load(path).map_err(anyhow::Error::msg)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let sources = AppSource::from_config(&config, base).map_err(anyhow::Error::msg)?;
        let host = match &config.http_options.host {
            None => None,
            Some(h) => Some(
                h.parse::<IpAddr>()
                    .with_context(|| format!("{}: http_options.host '{h}'", path.display()))?,
            ),
        };
        return Ok(Some(Target {
            sources,
            host,
            port: config.http_options.port,
        }));
    }
    if !args.target.contains(':') || args.target.ends_with(".yml") || args.target.ends_with(".yaml")
    {
        return Ok(None);
    }
    let app_dir = args
        .app_dir
        .canonicalize()
        .with_context(|| format!("--app-dir {}", args.app_dir.display()))?;
    let mut builder_args = Map::new();
    for a in &args.args {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("'{a}': application arguments are KEY=VALUE"))?;
        builder_args.insert(k.to_string(), Value::String(v.to_string()));
    }
    if !args.route_prefix.starts_with('/') {
        anyhow::bail!(
            "--route-prefix must start with '/', got '{}'",
            args.route_prefix
        );
    }
    Ok(Some(Target {
        sources: vec![AppSource {
            name: args.name.clone(),
            import_path: args.target.clone(),
            app_dir,
            args: builder_args,
            route_prefix: Some(args.route_prefix.clone()),
            overrides: Default::default(),
            env: Vec::new(),
        }],
        host: None,
        port: None,
    }))
}

/// Starts every application's deployments, then serves them until a signal.
pub fn run(args: RunArgs, target: Target) -> anyhow::Result<()> {
    if args.grpc_port.is_some() {
        tracing::warn!("--grpc-port: Ray Serve applications are served over HTTP only");
    }
    let runtime = start_runtime(&args.runtime)?;
    let host = args
        .host
        .or(target.host)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = args.port.or(target.port).unwrap_or(DEFAULT_PORT);
    let limits = args.runtime.connections.limits()?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = RayOptions {
        python: args
            .runtime
            .python
            .clone()
            .unwrap_or_else(|| PathBuf::from("python3")),
    };
    let apps = Arc::new(
        RayApps::build(&target.sources, &options, &runtime, tokio.handle().clone())
            .map_err(anyhow::Error::msg)?,
    );
    for (prefix, app) in apps.routes() {
        tracing::info!("application '{app}' at {prefix}");
    }
    let result = tokio.block_on(async move {
        let (stop, stopped) = watch::channel(false);
        let listener = bind(SocketAddr::new(host, port), "HTTP").await?;
        let app = ferroserve_http::ray_router(
            runtime.clone(),
            apps.clone(),
            HttpOptions {
                max_request_bytes: args.runtime.max_request_bytes,
                management_token: None,
                repository_changes_without_token: host.is_loopback(),
                console: false,
            },
        );
        let server = tokio::spawn(ferroserve_listen::serve(
            listener,
            app,
            limits,
            async move {
                let mut rx = stopped;
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        tracing::info!("server ready");
        shutdown_signal().await;
        let grace = args.runtime.shutdown_grace;
        drain(stop, vec![server], runtime, &args.runtime).await?;
        let joined = tokio::task::spawn_blocking(move || apps.shut_down());
        if tokio::time::timeout(Duration::from_secs_f64(grace), joined)
            .await
            .is_err()
        {
            tracing::warn!("deployments still running when the shutdown grace period ended; exiting anyway (their workers end with the server's sockets)");
        }
        anyhow::Ok(())
    });
    // A request stuck in a worker must not hold the exit: its thread is left behind.
    tokio.shutdown_background();
    result
}
