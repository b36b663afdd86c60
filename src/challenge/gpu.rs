//! GPU stats for IDENTITY and the metrics, read through NVML. NVML is loaded once per process, on
//! first use; a machine without the NVIDIA driver (or without a GPU) has no stats, which is no error.

use std::ops::ControlFlow;
use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use serde::Serialize;

/// One device, with the fields the network's scheduler reads (PROTOCOL §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuStat {
    pub name: String,
    pub driver_version: String,
    pub vram_total_mb: u64,
    pub vram_used_mb: u64,
    pub vram_free_mb: u64,
    pub utilization_gpu_pct: u32,
    pub utilization_mem_pct: u32,
    /// Discrete NVIDIA GPUs have memory of their own; the network's node reports shared memory so.
    pub unified_memory: bool,
}

pub struct Gpus {
    nvml: OnceLock<Option<Nvml>>,
}

const MIB: u64 = 1024 * 1024;

static GPUS: Gpus = Gpus { nvml: OnceLock::new() };

impl Gpus {
    /// The process's one NVML handle.
    pub fn shared() -> &'static Self {
        &GPUS
    }

    /// NVML, loaded on first use; `None` where the driver is not installed.
    fn nvml(&self) -> Option<&Nvml> {
        let nvml = self.nvml.get_or_init(|| match Nvml::init() {
            Ok(nvml) => Some(nvml),
            Err(e) => {
                log::info!(
                    "no GPU stats (IDENTITY answers gpuStats: null, no fxn_gpu_* metrics): NVML is not available ({e})"
                );
                None
            }
        });
        nvml.as_ref()
    }

    /// Every device's stats; `None` without a driver or a device. NVML answers from the driver
    /// in a few milliseconds: call it off the proxy's threads.
    pub fn stats(&self) -> Option<Vec<GpuStat>> {
        let nvml = self.nvml()?;
        let read = || -> Result<Vec<GpuStat>, nvml_wrapper::error::NvmlError> {
            let driver_version = nvml.sys_driver_version()?;
            (0..nvml.device_count()?)
                .map(|index| {
                    let device = nvml.device_by_index(index)?;
                    let memory = device.memory_info()?;
                    let utilization = device.utilization_rates()?;
                    Ok(GpuStat {
                        name: device.name()?,
                        driver_version: driver_version.clone(),
                        vram_total_mb: memory.total / MIB,
                        vram_used_mb: memory.used / MIB,
                        vram_free_mb: memory.free / MIB,
                        utilization_gpu_pct: utilization.gpu,
                        utilization_mem_pct: utilization.memory,
                        unified_memory: false,
                    })
                })
                .collect()
        };
        match read() {
            Ok(stats) if stats.is_empty() => None,
            Ok(stats) => Some(stats),
            Err(e) => {
                log::warn!("IDENTITY: reading GPU stats through NVML failed ({e}); answering gpuStats: null");
                None
            }
        }
    }
}

/// Reads every GPU's stats into the metrics; stops (breaks) where there is no driver, since
/// then there is nothing to read now or later.
pub async fn poll_into_metrics() -> ControlFlow<()> {
    let gpus = Gpus::shared();
    match tokio::task::spawn_blocking(|| gpus.stats()).await {
        Ok(Some(stats)) => crate::metrics::metrics().gpus_read(&stats),
        _ if gpus.nvml().is_none() => return ControlFlow::Break(()),
        _ => {}
    }
    ControlFlow::Continue(())
}
