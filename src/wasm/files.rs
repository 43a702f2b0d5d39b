//! The user's `File`s as byte sources read in slices.

use crate::model::checkpoint::ByteSource;
use crate::session::ModelFiles;
use crate::{Error, Result};
use wasm_bindgen::JsCast;

/// A `File` (or `Blob`) read in slices with `FileReaderSync`, so only the bytes asked for enter wasm memory.
pub struct BlobSource {
    name: String,
    blob: web_sys::Blob,
    reader: web_sys::FileReaderSync,
}

impl BlobSource {
    pub fn new(name: String, blob: web_sys::Blob) -> Result<Self> {
        let reader = web_sys::FileReaderSync::new()
            .map_err(|_| Error::file(&name, "cannot be read here: FileReaderSync exists only inside a Web Worker"))?;
        Ok(Self { name, blob, reader })
    }
}

impl ByteSource for BlobSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = self.range_end(offset, len)?;
        let slice = self
            .blob
            .slice_with_f64_and_f64(offset as f64, end as f64)
            .map_err(|_| Error::file(&self.name, "cannot be sliced"))?;
        let buf = self
            .reader
            .read_as_array_buffer(&slice)
            .map_err(|e| Error::file(&self.name, format!("cannot be read ({e:?})")))?;
        let arr = js_sys::Uint8Array::new(&buf);
        if arr.length() as usize != len {
            return Err(Error::file(&self.name, format!("short read: {} of {len} bytes", arr.length())));
        }
        let mut out = vec![0u8; len];
        arr.copy_to(&mut out);
        Ok(out)
    }
}

/// The user's `File`s, sorted by name.
pub(super) fn model_files(files: &js_sys::Array) -> Result<ModelFiles> {
    let mut set = ModelFiles::default();
    for f in files.iter() {
        let file: web_sys::File =
            f.dyn_into().map_err(|_| Error::msg("an item given as a model file is not a File"))?;
        let name = file.name();
        set.add(&name, Box::new(BlobSource::new(name.clone(), file.into())?))?;
    }
    Ok(set)
}
