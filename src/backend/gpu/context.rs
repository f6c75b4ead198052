//! The device, its queue, the command encoder that ops are recorded into, and the pipeline
//! and bind group caches. Ops append dispatches; work is submitted when a result is read back
//! or the caller synchronizes, and a readback is the only wait.

mod bind_groups;
mod replay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use wgpu::util::DeviceExt;

use super::shaders::Kernel;
use crate::backend::KernelTime;
use crate::error::{Error, Result};
use bind_groups::BindGroups;
use replay::Capture;
pub use replay::Replay;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_name: String,
    recording: Mutex<Recording>,
    pipelines: Mutex<HashMap<(Kernel, &'static str), Pipeline>>,
    /// Locked after the buffer pool's lock where both are held (the pool frees blocks).
    bind_groups: Mutex<BindGroups>,
    /// The dispatches one thread is capturing for a replay, while it does.
    capture: Mutex<Option<Capture>>,
    /// Device time per kernel, while a caller asks for it (`time_kernels`).
    kernel_clock: Mutex<Option<KernelClock>>,
    /// Bound where a kernel's optional operand is absent.
    pub placeholder: wgpu::Buffer,
    /// Timestamp queries between ops, where the adapter can write them inside an encoder.
    timestamps: Option<Timestamps>,
    /// The first error wgpu reported outside an error scope, kept until the next wait.
    uncaptured: Arc<Mutex<Option<String>>>,
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

/// The command encoder being recorded into, and the compute pass that consecutive dispatches
/// share: one pass for a run of dispatches rather than one each, since wgpu still orders the
/// dispatches of a pass (each is its own usage scope, with barriers between them).
#[derive(Default)]
struct Recording {
    /// Open on `encoder` (declared first, so that it ends before the encoder drops); ended
    /// before anything else is recorded.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
}

impl Recording {
    /// The encoder, with no pass open on it.
    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") })
        })
    }

    /// The open compute pass, begun if none is.
    fn pass(&mut self, device: &wgpu::Device) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let pass = self
                .encoder(device)
                .begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().expect("a pass was just begun")
    }

    /// Everything recorded so far, finished.
    fn finish(&mut self) -> Option<wgpu::CommandBuffer> {
        self.pass = None;
        self.encoder.take().map(wgpu::CommandEncoder::finish)
    }
}

/// A compiled entry point, and the name the kernel times give it (`variant::entry`).
#[derive(Clone)]
pub struct Pipeline {
    raw: wgpu::ComputePipeline,
    name: Arc<str>,
}

/// Compute passes (one per dispatch) timed between two readbacks: wgpu's largest query set
/// holds 4096 timestamps, two per pass.
const CLOCKED_PASSES: u32 = 2048;

/// Timestamps written at the start and end of every compute pass, and their sums by kernel.
struct KernelClock {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    period_ns: f64,
    /// The kernel of each pass recorded since the last drain: pass i wrote queries 2i, 2i + 1.
    pending: Vec<Arc<str>>,
    totals: HashMap<Arc<str>, KernelTime>,
}

/// A storage buffer bound at a binding index.
pub(crate) type Binding<'a> = (u32, &'a wgpu::Buffer);

impl GpuContext {
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, adapter_name: String) -> Arc<GpuContext> {
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 256,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let timestamps = device
            .features()
            .contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            )
            .then(|| Timestamps {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("timing"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolved: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timing"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                period_ns: queue.get_timestamp_period() as f64,
            });
        // Errors are caught in scopes where they are expected; anything else (a bug) is kept and
        // returned by the next wait or readback, rather than aborting the user's process.
        let uncaptured = Arc::new(Mutex::new(None));
        let slot = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            tracing::error!("wgpu: {e}");
            lock(&slot).get_or_insert_with(|| e.to_string());
        }));
        Arc::new(GpuContext {
            uncaptured,
            timestamps,
            device,
            queue,
            adapter_name,
            recording: Mutex::new(Recording::default()),
            pipelines: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(BindGroups::default()),
            capture: Mutex::new(None),
            kernel_clock: Mutex::new(None),
            placeholder,
        })
    }

    /// Runs `f` on the current command encoder, starting one if none is open.
    pub fn record<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        self.if_capturing(Capture::not_replayable);
        self.encode(f)
    }

    /// [`GpuContext::record`] for the context's own bookkeeping (timestamps of timed
    /// dispatches), which a capture leaves out.
    fn encode<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        f(lock(&self.recording).encoder(&self.device))
    }

    /// Starts capturing the calling thread's dispatches; false while another capture runs.
    pub fn begin_capture(&self) -> bool {
        let mut capture = lock(&self.capture);
        if capture.is_some() {
            return false;
        }
        *capture = Some(Capture::new());
        true
    }

    /// Ends the calling thread's capture: its replay, or None where it recorded something a
    /// replay cannot repeat.
    pub fn end_capture(&self) -> Option<Replay> {
        let mut capture = lock(&self.capture);
        match capture.take() {
            Some(c) if c.is_mine() => c.finish(),
            other => {
                *capture = other;
                None
            }
        }
    }

    /// Runs `f` on the capture if the calling thread is capturing.
    fn if_capturing(&self, f: impl FnOnce(&mut Capture)) {
        if let Some(c) = lock(&self.capture).as_mut().filter(|c| c.is_mine()) {
            f(c);
        }
    }

    /// Keeps `block` (pool memory an op allocates) with the calling thread's capture, if any.
    pub fn keep_while_capturing(&self, block: impl FnOnce() -> Arc<dyn Send + Sync>) {
        self.if_capturing(|c| c.keep(block()));
    }

    /// Encodes a replay's dispatches after the work recorded so far.
    pub fn replay(&self, replay: &Replay) {
        let mut recording = lock(&self.recording);
        replay::encode(recording.pass(&self.device), replay);
    }

    /// The device time in ms of the work `f` records, from timestamps written before and after
    /// it; None where the adapter cannot write timestamps inside an encoder.
    pub fn device_time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        let Some(ts) = &self.timestamps else {
            f()?;
            return Ok(None);
        };
        self.record(|encoder| encoder.write_timestamp(&ts.set, 0));
        f()?;
        self.record(|encoder| {
            encoder.write_timestamp(&ts.set, 1);
            encoder.resolve_query_set(&ts.set, 0..2, &ts.resolved, 0);
        });
        let ticks: [u64; 2] = bytemuck::pod_read_unaligned(&self.read(&ts.resolved, 0, 16)?);
        Ok(Some(
            ticks[1].wrapping_sub(ticks[0]) as f64 * ts.period_ns / 1e6,
        ))
    }

    /// Submits everything recorded so far, without waiting.
    pub fn flush(&self) {
        if let Some(commands) = lock(&self.recording).finish() {
            self.queue.submit([commands]);
        }
    }

    /// Submits and waits until the device is idle.
    pub fn wait(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.gpu_error("waiting for the queue", e))?;
        self.take_uncaptured()
    }

    /// The error wgpu reported since the last wait, if any.
    fn take_uncaptured(&self) -> Result<()> {
        match lock(&self.uncaptured).take() {
            None => Ok(()),
            Some(message) => Err(self.gpu_error("recorded work", message)),
        }
    }

    pub fn gpu_error(&self, context: &str, e: impl std::fmt::Display) -> Error {
        Error::Gpu {
            context: format!("{context} on {}", self.adapter_name),
            message: e.to_string(),
        }
    }

    /// The pipeline of `entry` in `kernel`, compiled on first use.
    pub fn pipeline(&self, kernel: Kernel, entry: &'static str) -> Result<Pipeline> {
        if let Some(p) = lock(&self.pipelines).get(&(kernel, entry)) {
            return Ok(p.clone());
        }
        let name = format!("{}::{entry}", kernel.name());
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&name),
                source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &kernel.constants(),
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.gpu_error(&format!("compiling {name}"), e));
        }
        let pipeline = Pipeline {
            raw: pipeline,
            name: name.into(),
        };
        lock(&self.pipelines).insert((kernel, entry), pipeline.clone());
        Ok(pipeline)
    }

    /// Starts or stops timing every dispatch by the device's clock (a timestamp at the start
    /// and end of its pass); false where the device cannot write timestamps.
    pub fn time_kernels(&self, on: bool) -> bool {
        let mut clock = lock(&self.kernel_clock);
        if !on {
            *clock = None;
            return true;
        }
        if !self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return false;
        }
        clock.get_or_insert_with(|| KernelClock {
            set: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel times"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * CLOCKED_PASSES,
            }),
            resolved: self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel times"),
                size: 16 * CLOCKED_PASSES as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period_ns: self.queue.get_timestamp_period() as f64,
            pending: Vec::new(),
            totals: HashMap::new(),
        });
        true
    }

    /// Device time by kernel since the last call (empty when timing is off), largest first.
    /// Waits for the work recorded so far.
    pub fn take_kernel_times(&self) -> Result<Vec<KernelTime>> {
        let mut slot = lock(&self.kernel_clock);
        let Some(clock) = slot.as_mut() else {
            return Ok(Vec::new());
        };
        self.drain(clock)?;
        let mut times: Vec<KernelTime> = clock.totals.drain().map(|(_, t)| t).collect();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }

    /// Reads back the pending passes' timestamps and adds them to the totals.
    fn drain(&self, clock: &mut KernelClock) -> Result<()> {
        let passes = clock.pending.len() as u32;
        if passes == 0 {
            return Ok(());
        }
        self.encode(|encoder| {
            encoder.resolve_query_set(&clock.set, 0..2 * passes, &clock.resolved, 0)
        });
        let ticks: Vec<u64> =
            bytemuck::pod_collect_to_vec(&self.read(&clock.resolved, 0, 16 * passes as u64)?);
        for (name, pair) in clock.pending.drain(..).zip(ticks.chunks_exact(2)) {
            let total = clock
                .totals
                .entry(name.clone())
                .or_insert_with(|| KernelTime {
                    kernel: name.to_string(),
                    calls: 0.0,
                    ms: 0.0,
                });
            total.calls += 1.0;
            total.ms += pair[1].wrapping_sub(pair[0]) as f64 * clock.period_ns / 1e6;
        }
        Ok(())
    }

    /// Records one dispatch of `pipeline` with `params` as its uniform block at binding 0,
    /// through the bind group made the first time these params and buffers were dispatched.
    pub fn dispatch(
        &self,
        pipeline: &Pipeline,
        params: &[u8],
        buffers: &[Binding<'_>],
        workgroups: [u32; 3],
    ) {
        let bind_group = lock(&self.bind_groups).get(&self.device, pipeline, params, buffers);
        self.if_capturing(|c| c.push(&pipeline.raw, &bind_group, workgroups));
        let [x, y, z] = workgroups;
        let mut clock = lock(&self.kernel_clock);
        let Some(c) = clock.as_mut() else {
            let mut recording = lock(&self.recording);
            let pass = recording.pass(&self.device);
            pass.set_pipeline(&pipeline.raw);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, z);
            return;
        };
        // Timed: a pass of its own, with a timestamp at each end.
        if c.pending.len() as u32 == CLOCKED_PASSES {
            // A failed readback loses these samples, not the op: its error comes back at the
            // next wait.
            if self.drain(c).is_err() {
                c.pending.clear();
            }
        }
        c.pending.push(pipeline.name.clone());
        let index = c.pending.len() as u32 - 1;
        self.encode(|encoder| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &c.set,
                    beginning_of_pass_write_index: Some(2 * index),
                    end_of_pass_write_index: Some(2 * index + 1),
                }),
            });
            pass.set_pipeline(&pipeline.raw);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, z);
        });
    }

    /// Drops the cached bind groups that bind any of `buffers`, which are being freed.
    pub fn forget_buffers(&self, buffers: &[wgpu::Buffer]) {
        lock(&self.bind_groups).forget(buffers);
    }

    /// Records a copy of `bytes` host bytes into `dst` at `offset` (both multiples of 4), in
    /// order with the ops around it.
    pub fn record_write(&self, dst: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let staging = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("upload"),
                contents: bytes,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        self.record(|encoder| {
            encoder.copy_buffer_to_buffer(&staging, 0, dst, offset, bytes.len() as u64)
        });
    }

    /// Reads `size` bytes at `offset` from `src`, after all recorded work.
    pub fn read(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        // Copies move whole 4-byte words: widen the range, then cut the answer out of it.
        let start = offset / 4 * 4;
        let end = (offset + size).div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (end - start).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if end > start {
            self.record(|encoder| {
                encoder.copy_buffer_to_buffer(src, start, &staging, 0, end - start)
            });
        }
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.gpu_error("waiting for a readback", e))?;
        self.take_uncaptured()?;
        rx.recv()
            .map_err(|e| self.gpu_error("reading back", e))?
            .map_err(|e| self.gpu_error("mapping a readback buffer", e))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| self.gpu_error("mapping a readback buffer", e))?;
        let from = (offset - start) as usize;
        Ok(view[from..from + size as usize].to_vec())
    }
}
