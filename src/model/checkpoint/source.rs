//! Random-access bytes: a file on disk, a `Blob` in a worker (the wasm edge's), or a buffer in memory. Offsets are
//! `u64` on every target.

use crate::{Error, Result};

/// Random-access bytes: a file on disk, a `Blob` in a worker, or a buffer in memory.
pub trait ByteSource {
    /// The file name, used in error messages.
    fn name(&self) -> &str;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Exactly `len` bytes starting at `offset`.
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// The end of a read of `len` bytes at `offset`, or the error that names the file when it runs past the end.
    fn range_end(&self, offset: u64, len: usize) -> Result<u64> {
        offset.checked_add(len as u64).filter(|&end| end <= self.len()).ok_or_else(|| {
            Error::file(
                self.name(),
                format!("read of {len} bytes at {offset} runs past the end ({} bytes)", self.len()),
            )
        })
    }
}

/// Bytes already in memory.
pub struct MemSource {
    name: String,
    bytes: std::sync::Arc<Vec<u8>>,
}

impl MemSource {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self { name: name.into(), bytes: std::sync::Arc::new(bytes) }
    }
}

impl ByteSource for MemSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.range_end(offset, len)?;
        // within the buffer's length, so within usize
        let start = offset as usize;
        Ok(self.bytes[start..start + len].to_vec())
    }
}

/// A file on disk, read with positioned reads.
#[cfg(not(target_arch = "wasm32"))]
pub struct FileSource {
    name: String,
    file: std::sync::Mutex<std::fs::File>,
    len: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| Error::file(&name, format!("cannot open ({e})")))?;
        let len = file.metadata().map_err(|e| Error::file(&name, e.to_string()))?.len();
        Ok(Self { name, file: std::sync::Mutex::new(file), len })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for FileSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        self.range_end(offset, len)?;
        let mut buf = vec![0u8; len];
        let mut f = self.file.lock().map_err(|_| Error::file(&self.name, "file lock poisoned"))?;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf).map_err(|e| Error::file(&self.name, format!("read failed ({e})")))?;
        Ok(buf)
    }
}
