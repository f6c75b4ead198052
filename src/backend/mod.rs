//! The op set as a trait (DESIGN.md, The op set), its shape rules, and the two backends.
//!
//! Model code is written once against [`Backend`]; the CPU backend and the wgpu backend
//! implement it, and `crate::reference` is the f64 oracle both are checked against.

pub mod cpu;
pub mod gpu;
mod matmul_spec;

pub use cpu::CpuBackend;
pub use gpu::GpuBackend;
pub use matmul_spec::MatmulSpec;

use crate::config::GpuConfig;
use crate::device::{Adapters, DeviceInfo, Selection};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::MemoryStats;
use crate::tensor::{HostTensor, Tensor};

/// Memory a tensor lives in. It can read itself back, so that a tensor alone can be brought to
/// the host.
pub trait Storage: Send + Sync + 'static {
    fn size_bytes(&self) -> u64;
    /// `bytes` bytes from `byte_offset`, after all work recorded so far has finished.
    fn read(&self, byte_offset: u64, bytes: u64) -> Result<Vec<u8>>;
}

/// The op set. Output tensors are written in place; ops may be recorded and run later, so
/// results are only certain to be there when read back or after [`Backend::synchronize`].
pub trait Backend: Send + Sync + Sized + 'static {
    type Storage: Storage;

    /// The device this backend runs on.
    fn info(&self) -> &DeviceInfo;

    /// A tensor whose contents are unspecified.
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>>;

    /// Writes host data into an existing tensor (or view) of the same shape and dtype.
    fn write(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()>;

    /// A new tensor holding `src`.
    fn upload(&self, src: &HostTensor) -> Result<Tensor<Self>> {
        let t = self.alloc(src.shape(), src.dtype())?;
        self.write(&t, src)?;
        Ok(t)
    }

    /// `out[b] = op(a[b]) · op(b[b]) (+ bias)` for every batch item, in f32.
    fn matmul(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()>;

    /// `out = a + b`, elementwise, f32.
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &Tensor<Self>) -> Result<()>;

    /// `out = alpha · x`, elementwise, f32.
    fn scale(&self, x: &Tensor<Self>, alpha: f32, out: &Tensor<Self>) -> Result<()>;

    /// `out = x` converted to `out`'s dtype (round to nearest even), any pair of dtypes.
    fn cast(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()>;

    /// `dst = src`, same shape and dtype.
    fn copy(&self, src: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;

    /// Waits until every op recorded so far has finished.
    fn synchronize(&self) -> Result<()>;

    /// Runs `f` (which records ops) and returns the device time of that work in ms, measured
    /// by the device's own clock where it has one (GPU timestamp queries); None where it has
    /// not, and the caller times the wall clock around [`Backend::synchronize`] instead.
    fn device_time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        f()?;
        Ok(None)
    }

    fn memory_stats(&self) -> MemoryStats;
    fn reset_peak_memory_stats(&self);
    /// Frees cached blocks that no tensor holds.
    fn empty_cache(&self);
}

/// Shape and dtype rules shared by both backends, so that they reject the same inputs with
/// the same messages.
pub(crate) mod check {
    use super::*;

    pub fn dtype<B: Backend>(op: &'static str, t: &Tensor<B>, want: DType) -> Result<()> {
        if t.dtype() != want {
            return Err(Error::UnsupportedDtype {
                op,
                dtype: t.dtype(),
                hint: "this op computes in f32; cast the operands first (f16/bf16 operands arrive \
                       with mixed precision)",
            });
        }
        Ok(())
    }

    pub fn same_len<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>) -> Result<()> {
        if a.len() != b.len() {
            return Err(Error::shape(
                op,
                format!(
                    "operands have {} ({:?}) and {} ({:?}) elements",
                    a.len(),
                    a.shape(),
                    b.len(),
                    b.shape()
                ),
            ));
        }
        Ok(())
    }

    /// True when two tensors share storage and some of their elements.
    pub fn overlap<B: Backend>(x: &Tensor<B>, y: &Tensor<B>) -> bool {
        x.shares_storage(y)
            && x.offset() < y.offset() + y.len()
            && y.offset() < x.offset() + x.len()
    }

    /// An elementwise op may write in place (an input and the output the same elements) but
    /// not into an input shifted against the output, whose result would depend on the order
    /// in which elements are written.
    pub fn in_place_or_apart<B: Backend>(
        op: &'static str,
        input: &Tensor<B>,
        out: &Tensor<B>,
    ) -> Result<()> {
        if overlap(input, out) && input.offset() != out.offset() {
            return Err(Error::shape(
                op,
                "the output partly overlaps an input; write in place (the same view) or to separate elements",
            ));
        }
        Ok(())
    }

    /// Elementwise ops on f32: every operand as long as the output.
    pub fn elementwise<B: Backend>(
        op: &'static str,
        inputs: &[&Tensor<B>],
        out: &Tensor<B>,
    ) -> Result<()> {
        dtype(op, out, DType::F32)?;
        for t in inputs {
            dtype(op, t, DType::F32)?;
            same_len(op, t, out)?;
            in_place_or_apart(op, t, out)?;
        }
        Ok(())
    }

    /// Host data written into a tensor: the same dtype and number of elements.
    pub fn write<B: Backend>(dst: &Tensor<B>, src: &HostTensor) -> Result<()> {
        if src.dtype() != dst.dtype() || src.len() != dst.len() {
            return Err(Error::shape(
                "write",
                format!(
                    "cannot write {} {:?} into {} {:?}",
                    src.dtype(),
                    src.shape(),
                    dst.dtype(),
                    dst.shape()
                ),
            ));
        }
        Ok(())
    }

    /// Copies: a conversion between equal dtypes.
    pub fn copy<B: Backend>(src: &Tensor<B>, dst: &Tensor<B>) -> Result<()> {
        if src.dtype() != dst.dtype() {
            return Err(Error::shape(
                "copy",
                format!(
                    "dtypes differ ({} to {}); use cast",
                    src.dtype(),
                    dst.dtype()
                ),
            ));
        }
        conversion("copy", src, dst)
    }

    /// Casts and copies: the same length; in place only between equal dtypes.
    pub fn conversion<B: Backend>(op: &'static str, x: &Tensor<B>, out: &Tensor<B>) -> Result<()> {
        same_len(op, x, out)?;
        if x.dtype() != out.dtype() && overlap(x, out) {
            return Err(Error::shape(
                op,
                "a conversion between dtypes cannot write over its input",
            ));
        }
        in_place_or_apart(op, x, out)
    }
}

/// A backend chosen at run time: the CPU or a wgpu adapter.
pub enum AnyBackend {
    Cpu(CpuBackend),
    Gpu(GpuBackend),
}

/// Runs `$body` with `$b` bound to the concrete backend inside an [`AnyBackend`].
#[macro_export]
macro_rules! with_backend {
    ($any:expr, $b:ident => $body:expr) => {
        match $any {
            $crate::backend::AnyBackend::Cpu($b) => $body,
            $crate::backend::AnyBackend::Gpu($b) => $body,
        }
    };
}

impl AnyBackend {
    /// Opens the device that `config.device` requests (DESIGN.md, Devices).
    pub fn open(config: &GpuConfig) -> Result<AnyBackend> {
        config.validate()?;
        let adapters = Adapters::discover();
        match adapters.select(&config.device)? {
            Selection::Cpu => Ok(AnyBackend::Cpu(CpuBackend::new(config)?)),
            Selection::Adapter(i) => {
                let (adapter, info) = adapters.adapter(i).expect("selection is in range");
                Ok(AnyBackend::Gpu(GpuBackend::new(
                    adapter,
                    info.clone(),
                    config,
                )?))
            }
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        with_backend!(self, b => b.info())
    }
}
