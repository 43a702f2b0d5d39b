//! A file of tensors, whatever its format ([`TensorFile`]: safetensors, a PyTorch archive), where each tensor lies in
//! it ([`TensorInfo`]), and one tensor's bytes as stored with their conversions (to f32, to 16-bit halves kept as
//! stored, to INT8 codes).

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::Dtype;
use std::collections::HashMap;

/// A file of named tensors, each read on its own by its byte range.
pub trait TensorFile {
    /// The file's name, for error messages.
    fn file_name(&self) -> &str;
    /// Its size in bytes.
    fn file_len(&self) -> u64;
    /// Tensor names in file order.
    fn names(&self) -> Vec<String>;
    fn info(&self, name: &str) -> Option<&TensorInfo>;
    /// The free-form metadata (safetensors' `__metadata__`), if the format has any.
    fn metadata(&self) -> Option<&HashMap<String, String>>;
    /// One tensor's bytes as stored.
    fn read(&self, name: &str) -> Result<RawTensor>;
    /// `len` bytes of tensor `name`'s data from byte `offset` of it: a slice, for what reads a large tensor piece by
    /// piece.
    fn read_slice(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
}

/// Where one tensor lies in its file, as the header says: dtype, shape and byte range (relative to the end of the
/// header). Offsets are `u64` on every target, so a file past 4 GiB reads the same in wasm32 as natively.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    /// Bytes of data.
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }

    /// Elements (u64: a buffer of bytes past 4 GiB counts more than a wasm32 `usize` holds).
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// One tensor's bytes as stored, with its dtype and shape.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The bytes an element of `dtype` takes, for the dtypes this crate reads.
pub fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (F32 as is; F16, BF16 and F64 converted). A weight holding Inf or NaN is an error: a
    /// checkpoint like that is damaged, and every figure computed from it would be meaningless.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let d = &self.data;
        let v: Vec<f32> = match self.dtype {
            Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => {
                d.chunks_exact(2).map(|c| crate::model::storage::f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
            }
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| crate::model::storage::bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::F64 => {
                d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            other => {
                return Err(Error::tensor(
                    &self.name,
                    format!(
                        "has dtype {other:?}, not a float type (this program reads F32, F16, BF16 and F64 weights)"
                    ),
                ))
            }
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::tensor(&self.name, format!("holds a non-finite value ({}) at element {i}", v[i])));
        }
        Ok(v)
    }

    /// A 2-D F16/BF16 tensor as a [`crate::model::storage::Factor::Half`] (kept as stored), `None` for other dtypes, an error
    /// if it holds Inf or NaN.
    pub fn to_half_factor(&self) -> Result<Option<crate::model::storage::Factor>> {
        let bf16 = match self.dtype {
            Dtype::F16 => false,
            Dtype::BF16 => true,
            _ => return Ok(None),
        };
        let (rows, cols) = match self.shape[..] {
            [r, c] => (r, c),
            _ => return Ok(None),
        };
        let bits: Vec<u16> = self.data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let bad = |&h: &u16| if bf16 { h & 0x7f80 == 0x7f80 } else { crate::model::storage::f16_is_non_finite(h) };
        if let Some(i) = bits.iter().position(bad) {
            return Err(Error::tensor(&self.name, format!("holds a non-finite value (Inf or NaN) at element {i}")));
        }
        Ok(Some(crate::model::storage::Factor::Half { rows, cols, bits, bf16 }))
    }

    /// The values as i8 (I8 tensors only).
    pub fn to_i8_vec(&self) -> Result<Vec<i8>> {
        match self.dtype {
            Dtype::I8 => Ok(self.data.iter().map(|&b| b as i8).collect()),
            other => Err(Error::tensor(&self.name, format!("expected dtype I8, found {other:?}"))),
        }
    }

    /// The values as i32 (I32 tensors only).
    pub fn to_i32_vec(&self) -> Result<Vec<i32>> {
        match self.dtype {
            Dtype::I32 => Ok(self.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            other => Err(Error::tensor(&self.name, format!("expected dtype I32, found {other:?}"))),
        }
    }

    /// The values as u32 (U32 tensors only).
    pub fn to_u32_vec(&self) -> Result<Vec<u32>> {
        match self.dtype {
            Dtype::U32 => Ok(self.data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            other => Err(Error::tensor(&self.name, format!("expected dtype U32, found {other:?}"))),
        }
    }

    /// The f16 bits (F16 tensors only).
    pub fn to_f16_bits(&self) -> Result<Vec<u16>> {
        match self.dtype {
            Dtype::F16 => Ok(self.data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
            other => Err(Error::tensor(&self.name, format!("expected dtype F16, found {other:?}"))),
        }
    }

    /// The values as an f32 candle tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.to_f32_vec()?, self.shape.clone(), &Device::Cpu)?)
    }
}
