//! `ferroserve serve`: load the repository, serve it, and shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferroserve_http::HttpOptions;
use ferroserve_runtime::{AccessPolicy, ModelState, Runtime, RuntimeOptions};
use tokio::sync::watch;

use crate::cli::{RuntimeArgs, ServeArgs};

/// Checks the shared settings and creates the (empty) runtime with the backends compiled in
/// (ONNX Runtime's library loads with the first ONNX model).
pub(crate) fn start_runtime(args: &RuntimeArgs) -> anyhow::Result<Arc<Runtime>> {
    if !(args.shutdown_grace >= 0.0 && args.shutdown_grace.is_finite()) {
        anyhow::bail!("--shutdown-grace must be a number of seconds, 0 or more");
    }
    if !(args.drain_delay >= 0.0 && args.drain_delay.is_finite()) {
        anyhow::bail!("--drain-delay must be a number of seconds, 0 or more");
    }
    let backends = ferroserve_runtime::backend::Backends::builtin(
        &ferroserve_runtime::backend::BuiltinOptions {
            ort_lib: args.ort_lib.clone(),
            python: args.python.clone(),
            install_requirements: args.install_requirements,
        },
    );
    tracing::debug!(?backends, "backends");
    let runtime = Runtime::new(
        backends,
        RuntimeOptions {
            max_queue_size: args.max_queue_size.max(1),
            task_threads: args.task_threads.map(|n| n as usize),
            memory_budget: args.memory_budget.clone().unwrap_or_default(),
            request_limits: ferroserve_runtime::RequestLimits {
                max_elements: args.max_request_elements,
                max_bytes_elements: args.max_bytes_elements,
            },
        },
    )
    .context("cannot start the task preprocessing threads")?;
    Ok(Arc::new(runtime))
}

/// Runs the server until SIGINT or SIGTERM, then drains it.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(repo) = &args.model_repository {
        if !repo.is_dir() {
            anyhow::bail!("model repository {} is not a directory", repo.display());
        }
    }
    let token = management_token(&args)?;
    if !args.management_host.is_loopback() && token.is_none() {
        anyhow::bail!(
            "--management-host {} is not a loopback address: the management API loads and unloads models, so serving it to other machines needs --management-token or --management-token-file",
            args.management_host
        );
    }
    if let Some(s) = args.poll_interval {
        if !(s > 0.0 && s.is_finite()) {
            anyhow::bail!("--poll-interval must be a number of seconds above 0");
        }
    }
    if let Some(n) = args.default_workers_per_model {
        ferroserve_runtime::torchserve_config::set_default_workers(n as usize);
    }
    let runtime = start_runtime(&args.runtime)?;
    let cache = args
        .store_cache
        .clone()
        .unwrap_or_else(|| ferroserve_core::default_home().join("cache"));
    let limits = ferroserve_store::Limits {
        max_archive_bytes: args.max_archive_bytes,
        max_unpacked_bytes: args.max_archive_bytes.saturating_mul(2),
        ..Default::default()
    };
    runtime.set_archive_cache(&cache, limits, Some(args.max_cache_bytes));
    if let Some(dir) = &args.model_store {
        if !dir.is_dir() {
            anyhow::bail!("model store {} is not a directory", dir.display());
        }
        let selection = ferroserve_store::Selection::parse(&args.models)?;
        runtime.use_store(
            ferroserve_store::Store::new(dir.clone(), cache, limits),
            selection,
        );
    }
    runtime.set_access_policy(AccessPolicy {
        allowed_paths: args.allowed_paths.clone(),
        allowed_urls: args.allowed_urls.clone(),
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args, runtime, token))
}

/// The management token from the flag, the environment or the file.
fn management_token(args: &ServeArgs) -> anyhow::Result<Option<ferroserve_core::Token>> {
    let secret = match (&args.management_token, &args.management_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the management token file {}", file.display()))?,
        (None, None) => return Ok(None),
    };
    ferroserve_core::Token::new(&secret)
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("the management token is empty"))
}

pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    let bound = listener.local_addr()?;
    tracing::info!("{what} listening on http://{bound}");
    Ok(listener)
}

async fn serve(
    args: ServeArgs,
    runtime: Arc<Runtime>,
    token: Option<ferroserve_core::Token>,
) -> anyhow::Result<()> {
    // Listen first, so liveness probes answer while models load; readiness waits for them.
    let limits = args.runtime.connections.limits()?;
    let http = bind(SocketAddr::new(args.host, args.http_port), "HTTP").await?;
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let app = ferroserve_http::router(
        runtime.clone(),
        HttpOptions {
            max_request_bytes: args.runtime.max_request_bytes,
            management_token: token.clone(),
            repository_changes_without_token: args.host.is_loopback(),
            console: !args.runtime.no_console,
        },
    );
    let mut servers = vec![tokio::spawn(ferroserve_listen::serve(
        http,
        app,
        limits.clone(),
        until_stopped(stopped.clone()),
    ))];
    let grpc = bind(SocketAddr::new(args.host, args.grpc_port), "gRPC").await?;
    let grpc_options = ferroserve_grpc::GrpcOptions {
        max_message_bytes: args.grpc_max_message_bytes,
        management_token: token.clone(),
        repository_changes_without_token: args.host.is_loopback(),
        limits: limits.clone(),
    };
    let grpc_runtime = runtime.clone();
    let grpc_stop = until_stopped(stopped.clone());
    servers.push(tokio::spawn(async move {
        ferroserve_grpc::serve(grpc, grpc_runtime, grpc_options, grpc_stop).await
    }));
    if let Some(port) = args.metrics_port {
        let listener = bind(SocketAddr::new(args.host, port), "metrics").await?;
        servers.push(tokio::spawn(ferroserve_listen::serve(
            listener,
            ferroserve_http::metrics_router(runtime.clone()),
            limits.clone(),
            until_stopped(stopped.clone()),
        )));
    }

    let management = bind(
        SocketAddr::new(args.management_host, args.management_port),
        "management API",
    )
    .await?;
    servers.push(tokio::spawn(ferroserve_listen::serve(
        management,
        ferroserve_http::management_router(
            runtime.clone(),
            HttpOptions {
                max_request_bytes: args.runtime.max_request_bytes,
                management_token: token,
                repository_changes_without_token: true,
                console: false,
            },
        ),
        limits,
        until_stopped(stopped.clone()),
    )));

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let layout = repository_layout(&args)?;
    if let Some(dir) = &args.model_config_dir {
        runtime.set_model_config_dir(dir);
    }
    let loader = runtime.clone();
    let loading = tokio::task::spawn_blocking(move || match layout {
        Layout::Repository(repo) => loader.load_repository(&repo),
        Layout::SingleModel(dir, name) => loader.load_single_model(&dir, &name),
        Layout::StoreOnly => loader.load_all(),
    });
    let mut poller = None;
    tokio::select! {
        loaded = loading => {
            loaded
                .context("model loading panicked")?
                .context("cannot read the model repository or store")?;
            let rows = runtime.index(false);
            let ready = rows.iter().filter(|r| r.state == ModelState::Ready).count();
            tracing::info!(ready, unavailable = rows.len() - ready, "server ready");
            if let Some(seconds) = args.poll_interval {
                poller = Some(tokio::spawn(poll(runtime.clone(), Duration::from_secs_f64(seconds))));
            }
            signal.await;
        }
        () = &mut signal => {}
    }
    if let Some(p) = poller {
        p.abort();
    }

    drain(stop, servers, runtime, &args.runtime).await
}

/// What `--model-repository` holds.
enum Layout {
    /// Model folders.
    Repository(std::path::PathBuf),
    /// One model (KServe's layout), with the name it is served under.
    SingleModel(std::path::PathBuf, String),
    /// No repository: only the model store.
    StoreOnly,
}

/// Tells a repository of model folders from one model's folder (KServe mounts the files of
/// the InferenceService's one model at `/mnt/models`), which is served under `--model-name`.
fn repository_layout(args: &ServeArgs) -> anyhow::Result<Layout> {
    let Some(repo) = &args.model_repository else {
        return Ok(Layout::StoreOnly);
    };
    let single = ferroserve_runtime::repository::is_single_model(repo)
        .with_context(|| format!("cannot read the model repository {}", repo.display()))?;
    if !single {
        if let Some(name) = &args.model_name {
            tracing::info!(model_name = %name, repository = %repo.display(), "the repository holds model folders: each is served under its folder's name, and --model-name is not used");
        }
        return Ok(Layout::Repository(repo.clone()));
    }
    let name = match &args.model_name {
        Some(name) if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) => {
            anyhow::bail!("--model-name (MODEL_NAME) '{name}' is not a model name: it must be non-empty, without '/' or '\\', and not start with '.'")
        }
        Some(name) => name.clone(),
        None => repo
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .ok_or_else(|| anyhow::anyhow!("{} holds one model's files rather than model folders: name it with --model-name or MODEL_NAME", repo.display()))?,
    };
    tracing::info!(model = %name, folder = %repo.display(), "the repository folder is one model (single-model layout)");
    Ok(Layout::SingleModel(repo.clone(), name))
}

/// Re-scans the model sources every `interval` (`--poll-interval`), one scan at a time.
async fn poll(runtime: Arc<Runtime>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let rt = runtime.clone();
        match tokio::task::spawn_blocking(move || rt.poll()).await {
            Ok(Ok(report)) if report != Default::default() => {
                tracing::info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, "model sources polled");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot poll the model sources"),
            Err(e) => tracing::error!(error = %e, "model source poll panicked"),
        }
    }
}

/// Turns readiness false, keeps accepting for the settings' drain delay (so a load balancer
/// such as a Kubernetes Service stops sending new requests first), then stops the listeners
/// (through `stop`) and waits for requests in flight and the models' queues, up to the
/// shutdown grace.
pub(crate) async fn drain(
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: Arc<Runtime>,
    args: &RuntimeArgs,
) -> anyhow::Result<()> {
    runtime.begin_drain();
    if args.drain_delay > 0.0 {
        tracing::info!(
            drain_delay_s = args.drain_delay,
            "shutting down: not ready, still accepting requests until the drain delay ends"
        );
        tokio::time::sleep(Duration::from_secs_f64(args.drain_delay)).await;
    }
    let grace_s = args.shutdown_grace;
    let grace = Duration::from_secs_f64(grace_s);
    tracing::info!(
        grace_s,
        "shutting down: no new connections, finishing requests in flight"
    );
    let _ = stop.send(true);
    let drain = async {
        for s in servers {
            s.await.context("HTTP server task failed")??;
        }
        let rt = runtime.clone();
        tokio::task::spawn_blocking(move || rt.shutdown())
            .await
            .context("stopping the models failed")?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(result) => {
            result?;
            tracing::info!("shut down cleanly");
        }
        Err(_) => tracing::warn!(
            grace_s,
            "requests still running when the shutdown grace period ended; exiting anyway"
        ),
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
