//! Ray's replica health checks: `check_health()` called on idle replicas, and a replica that
//! keeps failing restarted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferroserve_backend_python::SharedWorker;
use serde_json::{json, Value};

use super::pool::Replica;

/// Health checks failed in a row after which a replica is restarted (Ray's threshold).
const UNHEALTHY_AFTER: u32 = 3;

/// Calls each idle replica's `check_health` every `period`; a replica that raises or does not
/// answer within `timeout` [`UNHEALTHY_AFTER`] times in a row is restarted, as Ray restarts
/// unhealthy replicas. Busy replicas are skipped, and a late answer never kills a request in
/// flight: a long request on a sync method holds the replica's event loop, and that is no
/// sickness.
pub(crate) fn start_health_checks(
    name: &str,
    replicas: Weak<Mutex<Vec<Replica>>>,
    period: Duration,
    timeout: Duration,
    stopped: Arc<AtomicBool>,
) {
    let owned = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("health-{name}"))
        .spawn(move || {
            let mut failures: BTreeMap<usize, u32> = BTreeMap::new();
            loop {
            let name = &owned;
            std::thread::sleep(period);
            if stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(live) = replicas.upgrade() else { return };
            let workers: Vec<Arc<SharedWorker>> = live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|r| r.worker.clone())
                .collect();
            drop(live);
            failures.retain(|k, _| workers.iter().any(|w| Arc::as_ptr(w) as usize == *k));
            for w in workers.into_iter().filter(|w| w.is_idle()) {
                let Value::Object(header) = json!({"op": "health"}) else {
                    continue;
                };
                let problem = match w.probe(header, Instant::now() + timeout) {
                    Ok(f) if f.op() == "error" => Some(format!(
                        "check_health raised {}",
                        f.header.get("error").and_then(Value::as_str).unwrap_or("")
                    )),
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                };
                let key = Arc::as_ptr(&w) as usize;
                match problem {
                    None => {
                        failures.remove(&key);
                    }
                    Some(why) => {
                        let n = failures.entry(key).or_insert(0);
                        *n += 1;
                        tracing::warn!("deployment '{name}': health check failed ({why}), {n} in a row");
                        if *n >= UNHEALTHY_AFTER {
                            tracing::error!("deployment '{name}': the replica failed {n} health checks in a row and is restarted");
                            failures.remove(&key);
                            w.restart();
                        }
                    }
                }
            }
        }
        });
    if let Err(e) = spawned {
        tracing::warn!("deployment '{name}': cannot start health checks: {e}");
    }
}
