//! `ferroserve torchserve`: TorchServe's command line, so its users start ferroserve the way they
//! started TorchServe (`--start --ncs --model-store model_store --models ...`, `--stop`), with
//! TorchServe's defaults (inference on 8080, management on 8081, metrics on 8082, gRPC on 7070)
//! and the `config.properties` keys that matter here. It becomes a `ferroserve serve`.
//!
//! Without `--foreground` the server runs in the background, as TorchServe's does: its log goes
//! to `$FERROSERVE_HOME/logs/torchserve.log`, its PID to `$FERROSERVE_HOME/torchserve.pid`, and
//! `--stop` stops that process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::cli::{ServeArgs, TorchServeArgs};

/// `config.properties` keys read; the others are logged as ignored.
const READ: &[&str] = &[
    "inference_address",
    "management_address",
    "metrics_address",
    "model_store",
    "load_models",
    "default_workers_per_model",
    "job_queue_size",
    "max_request_size",
    "max_response_size",
];

/// Runs the command.
pub fn run(args: TorchServeArgs) -> anyhow::Result<()> {
    let home = ferroserve_core::default_home();
    let pid_file = home.join("torchserve.pid");
    if args.stop {
        return stop(&pid_file);
    }
    let serve_args = serve_command(&args)?;
    if args.foreground {
        let parsed = ServeCli::try_parse_from(&serve_args).map_err(|e| anyhow::anyhow!("{e}"))?;
        return crate::serve::run(parsed.serve);
    }
    if let Some(pid) = running(&pid_file) {
        anyhow::bail!(
            "ferroserve (TorchServe mode) is already running as process {pid}; stop it with `ferroserve torchserve --stop`"
        );
    }
    // Checked here, so a mistake is reported on the terminal rather than in the log.
    ServeCli::try_parse_from(&serve_args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let logs = home.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log_path = logs.join("torchserve.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the ferroserve binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("serve")
        .args(&serve_args[1..])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session, so the terminal's signals (Ctrl-C, hang-up) do not reach it.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the server")?;
    // A mistake the server finds at once (a port in use, a missing store) is reported here.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            anyhow::bail!(
                "the server exited at once ({status}); the end of {}:\n{}",
                log_path.display(),
                ferroserve_core::last_lines(&log, 5)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = std::fs::write(&pid_file, child.id().to_string()) {
        // Without its PID on record, `--stop` could not find it: not left running.
        let _ = child.kill();
        let _ = child.wait();
        return Err(e).with_context(|| format!("cannot write {}", pid_file.display()));
    }
    println!(
        "ferroserve started in TorchServe mode (process {}); log: {}; stop it with `ferroserve torchserve --stop`",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// `ferroserve serve` wrapped for parsing its arguments.
#[derive(Parser)]
struct ServeCli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The `ferroserve serve` command line (program name first) for TorchServe's arguments.
fn serve_command(args: &TorchServeArgs) -> anyhow::Result<Vec<String>> {
    let props = match &args.ts_config {
        Some(file) => properties(file)?,
        None => BTreeMap::new(),
    };
    for key in props.keys() {
        if !READ.contains(&key.as_str()) {
            tracing::info!(
                "config.properties: '{key}' has no meaning in ferroserve and is ignored"
            );
        }
    }
    let address = |key: &str, default: &str| -> anyhow::Result<(String, String)> {
        let value = props.get(key).map_or(default, String::as_str);
        host_port(value).with_context(|| format!("config.properties: {key} = {value}"))
    };
    let (host, port) = address("inference_address", "http://127.0.0.1:8080")?;
    let (management_host, management_port) =
        address("management_address", "http://127.0.0.1:8081")?;
    let (_, metrics_port) = address("metrics_address", "http://127.0.0.1:8082")?;
    let store = args
        .model_store
        .clone()
        .or_else(|| props.get("model_store").map(PathBuf::from))
        .ok_or_else(|| {
            anyhow::anyhow!("--model-store (or model_store in config.properties) is required")
        })?;
    let mut models = args.models.clone();
    if models.is_empty() {
        if let Some(load) = props.get("load_models") {
            models = load
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
        }
    }
    let mut out: Vec<String> = vec![
        "ferroserve-serve".into(),
        "--model-store".into(),
        store.display().to_string(),
        "--host".into(),
        host,
        "--http-port".into(),
        port,
        "--management-host".into(),
        management_host,
        "--management-port".into(),
        management_port,
        "--metrics-port".into(),
        metrics_port,
        "--grpc-port".into(),
        args.grpc_port.to_string(),
    ];
    if !models.is_empty() {
        out.push("--models".into());
        out.push(models.join(","));
    }
    if let Some(n) = props.get("job_queue_size") {
        out.extend(["--max-queue-size".into(), n.clone()]);
    }
    if let Some(n) = props.get("max_request_size") {
        out.extend(["--max-request-bytes".into(), n.clone()]);
    }
    if props.contains_key("max_response_size") {
        tracing::info!("config.properties: max_response_size is not needed: ferroserve streams answers of any size");
    }
    if let Some(n) = props.get("default_workers_per_model") {
        out.extend(["--default-workers-per-model".into(), n.clone()]);
    }
    if let Some(python) = &args.python {
        out.extend(["--python".into(), python.display().to_string()]);
    }
    if args.install_requirements {
        out.push("--install-requirements".into());
    }
    if let Some(lib) = &args.ort_lib {
        out.extend(["--ort-lib".into(), lib.display().to_string()]);
    }
    if args.log_config.is_some() {
        tracing::info!(
            "--log-config is ignored: ferroserve logs to stderr (RUST_LOG sets the level)"
        );
    }
    Ok(out)
}

/// `http://host:port` (or `host:port`) as `(host, port)`. TorchServe's `0.0.0.0` means every
/// interface, as it does here.
fn host_port(value: &str) -> anyhow::Result<(String, String)> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://").map(|_| ""))
        .unwrap_or(value);
    if rest.is_empty() {
        anyhow::bail!("https addresses need a TLS-terminating proxy in front of ferroserve; give an http:// address");
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("an address must be http://HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    port.parse::<u16>()
        .map_err(|_| anyhow::anyhow!("'{port}' is not a port number"))?;
    Ok((host.to_string(), port.to_string()))
}

/// A Java properties file's `key=value` (or `key: value`) lines; `#` and `!` start comments.
fn properties(file: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut out = BTreeMap::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        // A trailing backslash continues the value on the next line.
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let split = entry.find(['=', ':']).unwrap_or(entry.len());
        let key = entry[..split].trim().to_string();
        let value = entry.get(split + 1..).unwrap_or("").trim().to_string();
        if !key.is_empty() {
            out.insert(key, value);
        }
    }
    Ok(out)
}

/// The PID in the file, if that process is still running.
fn running(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A PID is reused once its process is gone: only one running this very binary is ours.
    let ours = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .zip(std::env::current_exe().ok())
        // A binary replaced since (an upgrade) shows as "PATH (deleted)".
        .is_some_and(|(theirs, mine)| {
            let theirs = theirs.to_string_lossy();
            theirs.strip_suffix(" (deleted)").unwrap_or(&theirs) == mine.to_string_lossy()
        });
    (pid > 0 && ours && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Stops the background server: SIGTERM (it drains its requests), then waits for it to go.
fn stop(pid_file: &Path) -> anyhow::Result<()> {
    let Some(pid) = running(pid_file) else {
        let _ = std::fs::remove_file(pid_file);
        println!("ferroserve (TorchServe mode) is not running");
        return Ok(());
    };
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        anyhow::bail!(
            "cannot stop process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let started = Instant::now();
    while unsafe { libc::kill(pid, 0) } == 0 {
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("process {pid} is still draining after 120 s; it was sent SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(pid_file);
    println!("ferroserve (TorchServe mode) has stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_properties() {
        assert_eq!(
            host_port("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), "8080".into())
        );
        assert_eq!(
            host_port("http://[::1]:9000/").unwrap(),
            ("::1".into(), "9000".into())
        );
        assert!(host_port("https://0.0.0.0:8443").is_err());
        assert!(host_port("http://localhost").is_err());
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("config.properties");
        std::fs::write(
            &file,
            "# comment\ninference_address=http://127.0.0.1:9080\nload_models = a.mar,\\\n  b.mar\nnumber_of_netty_threads: 4\n",
        )
        .unwrap();
        let p = properties(&file).unwrap();
        assert_eq!(p["inference_address"], "http://127.0.0.1:9080");
        assert_eq!(p["load_models"], "a.mar,b.mar");
        assert_eq!(p["number_of_netty_threads"], "4");
    }
}
