//! SignFlow: sign-language recognition transformers on any GPU, through hand-written WGSL
//! kernels dispatched by wgpu (Vulkan, Metal, DX12, GL), and on any CPU.
//!
//! Layers, each using only those below it (DESIGN.md, Layers), from the top:
//! - [`train`] (the trainer and its configuration), [`infer`] (the inference pipeline),
//!   [`export`] (ONNX export, and the reader of exported files) and [`profile`] (a model's
//!   time and memory per prediction or training step);
//! - [`model`]: the transformer, its parameters, checkpoints, and the workspace of one step;
//! - [`data`]: clip and feature packs, MP_Data import, preprocessing, batches, loader threads
//!   (it needs no backend);
//! - [`backend`]: the op set as a trait, checked once, with the CPU backend and the wgpu
//!   backend; [`tensor`] is a handle to a backend's storage, and [`selftest`] checks a backend
//!   against the f64 reference (`reference`, hidden from these docs);
//! - [`device`] and [`memory`]: adapter discovery and selection; the buffer pool and its budget;
//! - at the bottom, [`dtype`], [`error`], [`config`] and the counter-based dropout RNG.
//!
//! The internals that the command line, the tests and the benchmarks share (`bench`,
//! `reference`, `tolerance`, `fsio`, `rng`) are public but hidden from these docs; they are
//! not a stable API.
//!
//! ```no_run
//! use signflow::{AnyBackend, Backend, GpuConfig, HostTensor, MatmulSpec, ToDevice};
//!
//! let device = AnyBackend::open(&GpuConfig::default())?; // best GPU, else the CPU
//! signflow::with_backend!(&device, b => {
//!     println!("{}", b.info().name);
//!     let a = HostTensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.])?.to_device(b)?;
//!     let x = HostTensor::from_f32(&[3, 1], vec![1., 0., -1.])?.to_device(b)?;
//!     let y = b.alloc(&[2, 1], signflow::DType::F32)?;
//!     b.matmul(&a, &x, None, &y, &MatmulSpec::new(2, 1, 3))?;
//!     assert_eq!(y.to_f32_vec()?, vec![-2.0, -2.0]);
//! });
//! # Ok::<(), signflow::Error>(())
//! ```

pub mod backend;
#[doc(hidden)]
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod dtype;
pub mod error;
pub mod export;
#[doc(hidden)]
pub mod fsio;
pub mod infer;
mod isa;
pub mod memory;
pub mod model;
pub mod ops;
pub mod profile;
#[doc(hidden)]
pub mod reference;
#[doc(hidden)]
pub mod rng;
pub mod selftest;
pub mod tensor;
#[doc(hidden)]
pub mod tolerance;
pub mod train;

pub use backend::{
    AdamW, AnyBackend, AnyMemoryGuard, AttentionSpec, Backend, CpuBackend, Elementwise, GpuBackend,
    MatmulSpec,
};
pub use config::{AmpDtype, CoopMatrix, GpuConfig};
pub use device::{Adapters, DeviceInfo};
pub use dtype::DType;
pub use error::{Error, Result};
pub use memory::{MemoryGuard, MemoryStats};
pub use rng::DropoutKey;
pub use tensor::{HostTensor, Tensor, ToDevice};
