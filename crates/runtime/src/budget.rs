//! `--memory-budget`: how many bytes of model weights may be loaded, on every device or per
//! device.

use std::collections::BTreeMap;

use ferroserve_core::Device;

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
    fn from_str(s: &str) -> Result<Self, String> {
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
pub fn parse_bytes(s: &str) -> Result<u64, String> {
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
