//! Total device memory of a Vulkan adapter, read from its device-local memory heaps.
//!
//! wgpu has no portable memory query; on Vulkan the physical device's memory properties are
//! reachable through wgpu's hal access.

/// The size of the largest device-local heap of a Vulkan adapter. On integrated GPUs and
/// software rasterisers that heap is host memory shared with the CPU.
pub(crate) fn device_local_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    use ash::vk;
    // SAFETY: we only read immutable properties of the physical device through the instance
    // that owns it, while `adapter` keeps both alive.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let props = unsafe {
        hal.shared_instance()
            .raw_instance()
            .get_physical_device_memory_properties(hal.raw_physical_device())
    };
    props.memory_heaps[..props.memory_heap_count as usize]
        .iter()
        .filter(|heap| heap.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
        .map(|heap| heap.size)
        .max()
}
