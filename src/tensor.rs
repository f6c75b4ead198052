//! Tensors: a shape and dtype over storage that lives on the host or on a device, possibly a
//! view at an offset into a larger buffer (so that all parameters can share one arena).

use std::sync::Arc;

use half::{bf16, f16};

use crate::backend::{Backend, Storage};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Number of elements of a shape; `usize::MAX` where the product overflows (no allocation
/// or bounds check can then succeed).
pub fn numel(shape: &[usize]) -> usize {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// Bytes of a tensor of `shape` and `dtype` (saturating, like [`numel`]).
pub fn byte_len(shape: &[usize], dtype: DType) -> u64 {
    (numel(shape) as u64).saturating_mul(dtype.size_bytes() as u64)
}

/// A tensor on a backend. Cloning is cheap and shares the storage.
pub struct Tensor<B: Backend> {
    storage: Arc<B::Storage>,
    /// Offset of the first element, in elements of `dtype`.
    offset: usize,
    shape: Vec<usize>,
    dtype: DType,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor {
            storage: self.storage.clone(),
            offset: self.offset,
            shape: self.shape.clone(),
            dtype: self.dtype,
        }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("offset", &self.offset)
            .finish()
    }
}

impl<B: Backend> Tensor<B> {
    /// Wraps storage that holds at least `numel(shape)` elements of `dtype`.
    pub(crate) fn from_storage(storage: Arc<B::Storage>, shape: &[usize], dtype: DType) -> Self {
        debug_assert!(storage.size_bytes() >= (numel(shape) * dtype.size_bytes()) as u64);
        Tensor {
            storage,
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of the first element into the storage, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn storage(&self) -> &Arc<B::Storage> {
        &self.storage
    }

    /// True when both tensors use the same storage (they may overlap).
    pub fn shares_storage(&self, other: &Tensor<B>) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// A view of `shape` starting `offset` elements into this tensor. Views of 16-bit tensors
    /// start on an even element, so that GPU kernels address whole 32-bit words.
    pub fn view(&self, offset: usize, shape: &[usize]) -> Result<Tensor<B>> {
        let len = numel(shape);
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(Error::shape(
                "view",
                format!(
                    "a view of {shape:?} at offset {offset} needs {} elements, the tensor has {}",
                    offset.saturating_add(len),
                    self.len()
                ),
            ));
        }
        if self.dtype.size_bytes() == 2 && (self.offset + offset) % 2 != 0 {
            return Err(Error::shape(
                "view",
                format!(
                    "a {} view must start on an even element, not {offset}",
                    self.dtype
                ),
            ));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset + offset,
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// The same elements under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor<B>> {
        if numel(shape) != self.len() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "{:?} has {} elements, {shape:?} has {}",
                    self.shape,
                    self.len(),
                    numel(shape)
                ),
            ));
        }
        self.view(0, shape)
    }

    /// Copies the tensor to the host (waits for pending device work).
    pub fn to_host(&self) -> Result<HostTensor> {
        let size = self.dtype.size_bytes() as u64;
        let bytes = self
            .storage
            .read(self.offset as u64 * size, self.len() as u64 * size)?;
        HostTensor::from_bytes(&self.shape, self.dtype, &bytes)
    }

    /// The elements as f32 on the host, whatever the dtype.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.to_host()?.to_f32_vec())
    }
}

/// Elements of a host tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

/// A tensor in host memory, the form data takes to and from a device.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: HostData,
}

impl HostTensor {
    pub fn new(shape: &[usize], data: HostData) -> Result<HostTensor> {
        let len = match &data {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::Bf16(v) => v.len(),
        };
        if len != numel(shape) {
            return Err(Error::shape(
                "tensor",
                format!(
                    "shape {shape:?} needs {} elements, {len} given",
                    numel(shape)
                ),
            ));
        }
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<HostTensor> {
        HostTensor::new(shape, HostData::F32(data))
    }

    /// `data` rounded to `dtype`.
    pub fn from_f32_as(shape: &[usize], data: &[f32], dtype: DType) -> Result<HostTensor> {
        let data = match dtype {
            DType::F32 => HostData::F32(data.to_vec()),
            DType::F16 => HostData::F16(data.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::Bf16 => HostData::Bf16(data.iter().map(|&x| bf16::from_f32(x)).collect()),
        };
        HostTensor::new(shape, data)
    }

    /// Every element equal to `value`, stored as `dtype`.
    pub fn filled(shape: &[usize], dtype: DType, value: f32) -> HostTensor {
        HostTensor::from_f32_as(shape, &vec![value; numel(shape)], dtype)
            .expect("length matches shape")
    }

    fn from_bytes(shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<HostTensor> {
        let data = match dtype {
            DType::F32 => HostData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => HostData::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::Bf16 => HostData::Bf16(bytemuck::pod_collect_to_vec(bytes)),
        };
        HostTensor::new(shape, data)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &HostData {
        &self.data
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::Bf16(_) => DType::Bf16,
        }
    }

    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes of the elements.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.data {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::F16(v) => bytemuck::cast_slice(v),
            HostData::Bf16(v) => bytemuck::cast_slice(v),
        }
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// Moving things to a device: the counterpart of the PyTorch system's `move_to_device`.
/// Implemented for tensors now; batches and models join when they exist.
pub trait ToDevice {
    type On<B: Backend>;
    fn to_device<B: Backend>(&self, backend: &B) -> Result<Self::On<B>>;
}

impl ToDevice for HostTensor {
    type On<B: Backend> = Tensor<B>;
    fn to_device<B: Backend>(&self, backend: &B) -> Result<Tensor<B>> {
        backend.upload(self)
    }
}

impl<S: Backend> ToDevice for Tensor<S> {
    type On<B: Backend> = Tensor<B>;
    fn to_device<B: Backend>(&self, backend: &B) -> Result<Tensor<B>> {
        backend.upload(&self.to_host()?)
    }
}
