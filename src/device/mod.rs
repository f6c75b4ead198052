//! Adapter discovery, selection and description (DESIGN.md, Devices).

mod info;
mod precision;
mod select;
#[cfg(not(any(target_os = "macos", target_os = "ios", target_arch = "wasm32")))]
mod vulkan_memory;

pub use info::DeviceInfo;
pub use precision::{adapter_precisions, cpu_precisions, precision_that_runs, CoopMatrixShape};
pub use select::{
    describe, rank, resolve, AdapterSummary, ApiBackend, DeviceRequest, DeviceType, Selection,
};

use crate::error::Result;

/// Every adapter wgpu can see on every backend, best first (the order `signflow devices`
/// prints and `gpu:N` counts in).
pub struct Adapters {
    entries: Vec<(wgpu::Adapter, DeviceInfo, AdapterSummary)>,
}

impl Adapters {
    /// Asks every backend for its adapters. Takes a moment: drivers are loaded.
    pub fn discover() -> Adapters {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = desc_backends();
        let instance = wgpu::Instance::new(desc);
        let found = pollster::block_on(instance.enumerate_adapters(desc_backends()));
        let mut entries: Vec<_> = found
            .into_iter()
            .filter_map(|adapter| {
                let wgpu_info = adapter.get_info();
                let api = info::api_backend(wgpu_info.backend)?;
                let info = info::adapter_info(&adapter);
                let summary = info.summary(api, info::device_type(wgpu_info.device_type));
                Some((adapter, info, summary))
            })
            .collect();
        let summaries: Vec<_> = entries.iter().map(|e| e.2.clone()).collect();
        let order = rank(&summaries);
        let mut slots: Vec<Option<_>> = entries.drain(..).map(Some).collect();
        let mut ranked: Vec<_> = order.iter().map(|&i| slots[i].take().unwrap()).collect();
        let auto = resolve(&DeviceRequest::Auto, &summaries_of(&ranked)).ok();
        for (i, entry) in ranked.iter_mut().enumerate() {
            entry.1.index = Some(i);
            entry.1.auto = auto == Some(Selection::Adapter(i));
        }
        Adapters { entries: ranked }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Descriptions of the CPU backend (first) and every adapter, as `devices` prints them.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        let mut cpu = DeviceInfo::cpu();
        cpu.auto = !self.entries.iter().any(|e| e.1.auto);
        std::iter::once(cpu)
            .chain(self.entries.iter().map(|e| e.1.clone()))
            .collect()
    }

    pub fn summaries(&self) -> Vec<AdapterSummary> {
        summaries_of(&self.entries)
    }

    /// Resolves a request (`auto`, `cpu`, `gpu:1`, `vulkan`, part of a name ...).
    pub fn select(&self, request: &str) -> Result<Selection> {
        resolve(&DeviceRequest::parse(request)?, &self.summaries())
    }

    /// The adapter at ranked position `index` and its description.
    pub fn adapter(&self, index: usize) -> Option<(&wgpu::Adapter, &DeviceInfo)> {
        self.entries.get(index).map(|e| (&e.0, &e.1))
    }
}

fn desc_backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

fn summaries_of(entries: &[(wgpu::Adapter, DeviceInfo, AdapterSummary)]) -> Vec<AdapterSummary> {
    entries.iter().map(|e| e.2.clone()).collect()
}

/// Keeps Mesa's Vulkan device-selection layer (`VK_LAYER_MESA_device_select`) from printing
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` while adapters are
/// listed: without that variable it asks libwayland for a display that cannot exist, and
/// libwayland says so on standard error. The layer puts the adapter driving the display
/// first, and [`rank`] orders adapters anyway, so without that variable the layer is switched
/// off (`NODEVICE_SELECT=1`), unless the user configures it.
///
/// Sets an environment variable: call it at the start of `main`, before any thread starts.
pub fn quiet_display_probes() {
    let unset = |name: &str| std::env::var_os(name).is_none_or(|v| v.is_empty());
    let configured = [
        "NODEVICE_SELECT",
        "MESA_VK_DEVICE_SELECT",
        "MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE",
    ];
    if unset("XDG_RUNTIME_DIR") && configured.iter().all(|name| unset(name)) {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
