//! `--memory-budget`: how many bytes of model weights may be loaded, on every device or per
//! device, and keeping loads within it (evicting idle lazy models, least recently used first).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ferroserve_core::{Device, Error, Result};

use crate::placement::replica_devices;
use crate::repository::{self, ModelLayout};
use crate::runtime::Runtime;
use crate::table::{retire, EntryState, ModelEntry};

/// The memory budget: one limit for every device, and limits for named devices (which win).
///
/// ```
/// use ferroserve_runtime::MemoryBudget;
/// use ferroserve_core::Device;
///
/// let b: MemoryBudget = "2Gi".parse().unwrap();
/// assert_eq!(b.limit(Device::Cuda(3)), Some(2 << 30));
/// let b: MemoryBudget = "cpu=8G,cuda:0=20Gi".parse().unwrap();
/// assert_eq!(b.limit(Device::Cpu), Some(8_000_000_000));
/// assert_eq!(b.limit(Device::Cuda(1)), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The limit of devices not named below; `None`: no limit.
    pub every_device: Option<u64>,
    /// Limits of named devices.
    pub devices: BTreeMap<Device, u64>,
}

impl MemoryBudget {
    /// The limit on `device`, if any.
    pub fn limit(&self, device: Device) -> Option<u64> {
        self.devices.get(&device).copied().or(self.every_device)
    }

    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.every_device.is_some() || !self.devices.is_empty()
    }
}

impl std::str::FromStr for MemoryBudget {
    type Err = String;

    /// `BYTES` (every device), or `DEVICE=BYTES,...` (`cpu=8Gi,cuda:0=20Gi`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut budget = MemoryBudget::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                None => {
                    if budget.every_device.replace(parse_bytes(part)?).is_some() {
                        return Err(format!("'{s}' gives the every-device budget twice"));
                    }
                }
                Some((device, bytes)) => {
                    let device: Device = device.trim().parse()?;
                    if budget.devices.insert(device, parse_bytes(bytes)?).is_some() {
                        return Err(format!("'{s}' gives {device} twice"));
                    }
                }
            }
        }
        if !budget.is_set() {
            return Err("the memory budget is empty".into());
        }
        Ok(budget)
    }
}

/// Parses a byte count: digits with an optional K, M, G (powers of 1000) or Ki, Mi, Gi (powers
/// of 1024) suffix.
///
/// ```
/// assert_eq!(ferroserve_runtime::parse_bytes("512Mi"), Ok(512 << 20));
/// assert_eq!(ferroserve_runtime::parse_bytes("4G"), Ok(4_000_000_000));
/// assert!(ferroserve_runtime::parse_bytes("4 lots").is_err());
/// ```
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a number of bytes (e.g. 512Mi, 4G, 1000000)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (K, M, G, Ki, Mi, Gi)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is too large"))
}

impl Runtime {
    /// Makes room for `needed` bytes (by device) under the memory budget by unloading the
    /// least recently used idle lazy models holding memory on a device that is short (never
    /// `loading` itself, never one a request holds).
    pub(crate) fn make_room(&self, loading: &str, needed: &BTreeMap<Device, u64>) -> Result<()> {
        let budget = &self.options.memory_budget;
        for (&device, &n) in needed {
            if let Some(limit) = budget.limit(device).filter(|&l| n > l) {
                return Err(Error::unavailable(format!(
                    "model '{loading}' needs about {n} bytes on {device}, more than its whole memory budget ({limit} bytes, --memory-budget)"
                )));
            }
        }
        loop {
            let evicted = {
                let mut models = self.write_models();
                let mut used: BTreeMap<Device, u64> = BTreeMap::new();
                for (_, e) in models.iter().filter(|(n, _)| n.as_str() != loading) {
                    for v in e.ready() {
                        for (d, b) in v.device_bytes() {
                            *used.entry(d).or_insert(0) += b;
                        }
                    }
                }
                let short: Vec<(Device, u64, u64)> = needed
                    .iter()
                    .filter_map(|(&d, &n)| {
                        let held = used.get(&d).copied().unwrap_or(0);
                        budget
                            .limit(d)
                            .filter(|&limit| held + n > limit)
                            .map(|limit| (d, held, limit))
                    })
                    .collect();
                let Some(&(device, held, limit)) = short.first() else {
                    return Ok(());
                };
                // Under the write lock no request can pick a version up, so a version only the
                // map holds is idle, and stays so until it is gone.
                let victim = models
                    .iter()
                    .filter(|(n, e)| {
                        n.as_str() != loading
                            && e.lazy
                            && e.ready().any(|v| v.device_bytes().contains_key(&device))
                            && e.ready().all(|v| Arc::strong_count(v) == 1)
                    })
                    .min_by_key(|(_, e)| {
                        e.ready()
                            .map(|v| v.last_used.load(std::sync::atomic::Ordering::Relaxed))
                            .max()
                    })
                    .map(|(n, _)| n.clone());
                let Some(victim) = victim else {
                    return Err(Error::unavailable(format!(
                        "model '{loading}' needs about {} bytes on {device}, and {held} of its {limit}-byte memory budget are held by models that are busy or not lazy; retry later",
                        needed.get(&device).copied().unwrap_or(0)
                    )));
                };
                let entry = models.get_mut(&victim).ok_or_else(|| {
                    Error::internal(format!("model '{victim}' vanished while evicting"))
                })?;
                let old = std::mem::replace(&mut entry.state, EntryState::Unloaded);
                (victim, old)
            };
            let (victim, old) = evicted;
            tracing::info!(model = %victim, for_model = %loading, "evicting idle lazy model to keep within the memory budget");
            self.metrics.unloaded(&victim, true);
            retire(old);
            self.update_memory();
        }
    }

    /// Updates the memory gauges.
    pub(crate) fn update_memory(&self) {
        let mut used: BTreeMap<Device, u64> = BTreeMap::new();
        for v in self.read_models().values().flat_map(ModelEntry::ready) {
            for (d, b) in v.device_bytes() {
                *used.entry(d).or_insert(0) += b;
            }
        }
        let budget = &self.options.memory_budget;
        used.entry(Device::Cpu).or_insert(0);
        for d in budget.devices.keys() {
            used.entry(*d).or_insert(0);
        }
        for (d, bytes) in used {
            self.metrics.memory(d, bytes, budget.limit(d));
        }
    }
}

/// The memory a layout's versions will take, by device: their weight files times the replicas
/// placed there. Whether replicas share their weights is known only once they load (a model
/// that cannot be grouped loads a copy each), so a load makes room for a copy each; once
/// loaded, a version counts what it holds (`Version::device_bytes`).
pub(crate) fn estimate(layout: &ModelLayout, dir: &Path) -> BTreeMap<Device, u64> {
    let per_replica: u64 = layout
        .versions
        .values()
        .map(|file| repository::weights_bytes(file, dir))
        .sum();
    // A placement that cannot be made fails the load itself, with its own reason.
    let devices = replica_devices(&layout.config).unwrap_or_default();
    weights_by_device(devices, per_replica, false)
}

/// Memory by device of replicas placed on `devices`, each holding `bytes` of weights, or all
/// those on the CPU one copy between them when `shared_cpu`.
pub(crate) fn weights_by_device(
    devices: impl IntoIterator<Item = Device>,
    bytes: u64,
    shared_cpu: bool,
) -> BTreeMap<Device, u64> {
    let mut out = BTreeMap::new();
    for d in devices {
        let total = out.entry(d).or_insert(0);
        if !(shared_cpu && d == Device::Cpu && *total > 0) {
            *total += bytes;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_cpu_weights_count_once_and_other_devices_per_replica() {
        let gpu = Device::Cuda(0);
        let devices = [Device::Cpu, Device::Cpu, gpu, Device::Cpu, gpu];
        let each = weights_by_device(devices, 100, false);
        assert_eq!(each, BTreeMap::from([(Device::Cpu, 300), (gpu, 200)]));
        let shared = weights_by_device(devices, 100, true);
        assert_eq!(shared, BTreeMap::from([(Device::Cpu, 100), (gpu, 200)]));
    }
}
