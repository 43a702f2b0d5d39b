//! `pytorch_model.bin` as `torch.save` writes it since PyTorch 1.6: a zip archive whose `data.pkl` pickles the state
//! dict and whose `data/{key}` entries hold the storages, stored uncompressed, so that every tensor is a byte range of
//! the file and is read by that range alone ([`super::zip`], [`super::pickle`]). The legacy format (a bare pickle,
//! PyTorch before 1.6) is refused by name.

use crate::model::checkpoint::pickle::{state_dict, TensorRef};
use crate::model::checkpoint::source::ByteSource;
use crate::model::checkpoint::tensor::{RawTensor, TensorFile, TensorInfo};
use crate::model::checkpoint::zip::ZipDirectory;
use crate::{Error, Result};
use std::collections::HashMap;

/// The largest `data.pkl` read (a GPT-Neo state dict's pickle is tens of kilobytes).
const MAX_PICKLE: u64 = 64 << 20;

/// One `pytorch_model.bin` (or a shard of it), its tensors read on demand.
pub struct PytorchFile {
    source: Box<dyn ByteSource>,
    tensors: Vec<(String, TensorInfo)>,
    by_name: HashMap<String, usize>,
}

impl PytorchFile {
    /// Read the archive's directory and its state dict's pickle; check that every tensor lies inside its storage.
    pub fn open(source: Box<dyn ByteSource>) -> Result<Self> {
        let file = source.name().to_string();
        let head = source.read_at(0, source.len().min(4) as usize)?;
        if head.starts_with(&[0x80]) {
            return Err(Error::file(
                &file,
                "is in PyTorch's legacy format (a bare pickle, written before PyTorch 1.6), which this program does not \
                 read: save it again with a recent torch.save, or as safetensors",
            ));
        }
        if !head.starts_with(b"PK") {
            return Err(Error::file(&file, "is not a PyTorch checkpoint (torch.save writes a zip archive)"));
        }
        let dir = ZipDirectory::read(source.as_ref())?;
        let pkl =
            dir.entries.iter().find(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1).ok_or_else(
                || Error::file(&file, "is a zip archive without a data.pkl: not a torch.save checkpoint"),
            )?;
        let prefix = pkl.name.trim_end_matches("data.pkl").to_string();
        if let Some(order) = dir.entry(&format!("{prefix}byteorder")) {
            let (at, n) = dir.data_range(source.as_ref(), order)?;
            if source.read_at(at, n.min(16) as usize)? != b"little" {
                return Err(Error::file(
                    &file,
                    "was saved on a big-endian machine; this reader reads little-endian data",
                ));
            }
        }
        let (at, n) = dir.data_range(source.as_ref(), pkl)?;
        if n > MAX_PICKLE {
            return Err(Error::file(&file, format!("has a data.pkl of {n} bytes, more than a state dict's")));
        }
        let refs = state_dict(&file, &source.read_at(at, n as usize)?)?;
        let mut storages: HashMap<String, (u64, u64)> = HashMap::new();
        let mut tensors = Vec::with_capacity(refs.len());
        for (name, r) in refs {
            let range = match storages.get(&r.key) {
                Some(&range) => range,
                None => {
                    let entry = dir.entry(&format!("{prefix}data/{}", r.key)).ok_or_else(|| {
                        Error::tensor(&name, format!("in {file}: its storage data/{} is not in the archive", r.key))
                    })?;
                    let range = dir.data_range(source.as_ref(), entry)?;
                    storages.insert(r.key.clone(), range);
                    range
                }
            };
            tensors.push((name.clone(), locate(&file, &name, &r, range)?));
        }
        let by_name = tensors.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect::<HashMap<_, _>>();
        if by_name.len() != tensors.len() {
            return Err(Error::file(&file, "names a tensor twice"));
        }
        Ok(Self { source, tensors, by_name })
    }
}

/// Where tensor `name` (`r`) lies in the file, its storage's data at `(start, len)`: its bytes must be contiguous,
/// row-major, inside the storage.
fn locate(file: &str, name: &str, r: &TensorRef, (start, len): (u64, u64)) -> Result<TensorInfo> {
    let elem = (r.dtype.bitsize() / 8) as u64;
    if r.shape.len() != r.stride.len() {
        return Err(Error::tensor(
            name,
            format!("in {file} has {} strides for {} dimensions", r.stride.len(), r.shape.len()),
        ));
    }
    let mut expect = 1u64;
    for (&d, &s) in r.shape.iter().zip(&r.stride).rev() {
        if d > 1 && s as u64 != expect {
            return Err(Error::tensor(
                name,
                format!("in {file} is not stored contiguously (strides {:?} for shape {:?})", r.stride, r.shape),
            ));
        }
        expect = expect.saturating_mul(d as u64);
    }
    let numel = r.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let bytes = numel.and_then(|n| n.checked_mul(elem));
    let begin = r.offset.checked_mul(elem);
    match (bytes, begin) {
        (Some(b), Some(o)) if o.checked_add(b).is_some_and(|end| end <= len) => {
            Ok(TensorInfo { dtype: r.dtype, shape: r.shape.clone(), start: start + o, end: start + o + b })
        }
        _ => Err(Error::tensor(
            name,
            format!(
                "in {file} runs past its storage data/{} ({len} bytes): shape {:?} from element {}",
                r.key, r.shape, r.offset
            ),
        )),
    }
}

impl TensorFile for PytorchFile {
    fn file_name(&self) -> &str {
        self.source.name()
    }
    fn file_len(&self) -> u64 {
        self.source.len()
    }
    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|(n, _)| n.clone()).collect()
    }
    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i].1)
    }
    fn metadata(&self) -> Option<&HashMap<String, String>> {
        None
    }
    fn read(&self, name: &str) -> Result<RawTensor> {
        let info = self.info(name).ok_or_else(|| Error::tensor(name, format!("not found in {}", self.file_name())))?;
        let len = usize::try_from(info.bytes()).map_err(|_| {
            Error::tensor(
                name,
                format!("in {} holds {} bytes, more than this build can address", self.file_name(), info.bytes()),
            )
        })?;
        let data = self.source.read_at(info.start, len)?;
        Ok(RawTensor { name: name.to_string(), dtype: info.dtype, shape: info.shape.clone(), data })
    }
    fn read_slice(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let info = self.info(name).ok_or_else(|| Error::tensor(name, format!("not found in {}", self.file_name())))?;
        if offset.checked_add(len as u64).is_none_or(|end| end > info.bytes()) {
            return Err(Error::tensor(name, format!("has {} bytes; bytes {offset}.. were asked for", info.bytes())));
        }
        self.source.read_at(info.start + offset, len)
    }
}
