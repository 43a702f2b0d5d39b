//! Reading checkpoints by byte ranges: safetensors, and PyTorch's `pytorch_model.bin`.
//!
//! A [`SafetensorsFile`] reads only the 8-byte length and the JSON header when it is opened; each tensor is then read
//! on its own from its byte range of a [`ByteSource`]. In the browser that source is a `File` read in slices inside a
//! worker, so a checkpoint larger than wasm memory can still be walked tensor by tensor. A [`Checkpoint`] joins the
//! shards of `model.safetensors.index.json` into one namespace.
//!
//! [`source`]: bytes by range; [`tensor`]: a file of tensors and one tensor's bytes as stored; [`safetensors`]: one
//! safetensors file; [`pytorch`]: one `pytorch_model.bin` (a [`zip`] archive whose [`pickle`] is read as data);
//! [`shards`]: the whole checkpoint.

mod pickle;
mod pytorch;
mod safetensors;
mod shards;
mod source;
mod tensor;
mod zip;

pub use self::safetensors::{Header, SafetensorsFile};
pub use pytorch::PytorchFile;
pub use shards::{embedding_name, fingerprint, Checkpoint};
#[cfg(not(target_arch = "wasm32"))]
pub use source::FileSource;
pub use source::{ByteSource, MemSource};
pub use tensor::{dtype_name, RawTensor, TensorFile, TensorInfo};

#[cfg(test)]
mod tests;
