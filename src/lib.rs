//! SignFlow: sign-language recognition transformers on any GPU, through hand-written WGSL
//! kernels dispatched by wgpu (Vulkan, Metal, DX12, GL), and on any CPU.
//!
//! Layers, each using only those below it (see DESIGN.md):
//! - [`backend`]: the op set as a trait, the CPU backend and the wgpu backend;
//! - [`device`], [`memory`]: adapter discovery and selection; the buffer pool;
//! - [`reference`]: every op in plain f64, the oracle both backends are checked against.
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
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod dtype;
pub mod error;
pub mod fsio;
pub mod infer;
mod isa;
pub mod memory;
pub mod model;
pub mod ops;
pub mod reference;
pub mod rng;
pub mod selftest;
pub mod tensor;
pub mod tolerance;
pub mod train;

pub use backend::{AdamW, AnyBackend, AttentionSpec, Backend, CpuBackend, GpuBackend, MatmulSpec};
pub use config::GpuConfig;
pub use device::{Adapters, DeviceInfo};
pub use dtype::DType;
pub use error::{Error, Result};
pub use memory::{MemoryGuard, MemoryStats};
pub use rng::DropoutKey;
pub use tensor::{HostTensor, Tensor, ToDevice};
