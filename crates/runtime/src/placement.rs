//! Device placement: which device each replica of a model runs on.

use ferroserve_core::{Device, Error, Result};

use crate::config::{Devices, ModelConfig};

/// The device of each of `config.replicas` replicas. A GPU this process cannot see is the
/// server's lack, not the client's mistake: [`ferroserve_core::ErrorKind::Unavailable`].
pub(crate) fn replica_devices(config: &ModelConfig) -> Result<Vec<Device>> {
    devices_for(config, config.replicas)
}

/// The device of each of `n` replicas of a model configured by `config`.
pub(crate) fn devices_for(config: &ModelConfig, n: usize) -> Result<Vec<Device>> {
    match &config.devices {
        Devices::List(list) => {
            let gpus = visible_gpus();
            if let Some(missing) = list.iter().find(|d| match d {
                Device::Cuda(i) => *i as usize >= gpus,
                Device::Cpu => false,
            }) {
                return Err(Error::unavailable(format!(
                    "{missing} was asked for, but this server sees {gpus} GPUs (CUDA_VISIBLE_DEVICES, or the NVIDIA driver's list)"
                )));
            }
            Ok((0..n).map(|i| list[i % list.len()]).collect())
        }
        Devices::RoundRobin => {
            let gpus = visible_gpus();
            if gpus == 0 {
                return Err(Error::unavailable(
                    "devices: round-robin needs a visible GPU, and this machine shows none (CUDA_VISIBLE_DEVICES is empty or no NVIDIA driver is loaded)",
                ));
            }
            Ok((0..n).map(|i| Device::Cuda((i % gpus) as u32)).collect())
        }
    }
}

/// GPUs this process can use: `CUDA_VISIBLE_DEVICES` when set, else the NVIDIA driver's list.
fn visible_gpus() -> usize {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').filter(|s| !s.trim().is_empty()).count();
    }
    std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count())
}
