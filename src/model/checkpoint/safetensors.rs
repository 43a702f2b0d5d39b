//! One `.safetensors` file read by byte ranges: its header parsed and checked with the format's own rules, each tensor
//! read on its own when asked for.

use crate::model::checkpoint::source::ByteSource;
use crate::model::checkpoint::tensor::{RawTensor, TensorFile, TensorInfo};
use crate::{Error, Result};
use safetensors::tensor::Dtype;
use std::collections::HashMap;

/// The largest header we accept (safetensors' own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// A parsed header: the tensors in file order and the free-form `__metadata__`.
#[derive(Debug)]
pub struct Header {
    tensors: Vec<(String, TensorInfo)>,
    by_name: HashMap<String, usize>,
    metadata: Option<HashMap<String, String>>,
}

#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The dtypes safetensors defines, by their header names.
const DTYPES: [(&str, Dtype); 12] = [
    ("BOOL", Dtype::BOOL),
    ("U8", Dtype::U8),
    ("I8", Dtype::I8),
    ("I16", Dtype::I16),
    ("U16", Dtype::U16),
    ("F16", Dtype::F16),
    ("BF16", Dtype::BF16),
    ("I32", Dtype::I32),
    ("U32", Dtype::U32),
    ("F32", Dtype::F32),
    ("F64", Dtype::F64),
    ("I64", Dtype::I64),
];

/// The header's entries in the order written, duplicates kept (a JSON object read into a map would keep only the
/// last of two entries with one name, and the file would be read wrong without a word).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Header {
    /// Parse the header JSON of `file` and check it with the safetensors crate's own rules, in u64: every entry is
    /// a dtype, a shape and two offsets; no name twice; sorted by offset the tensors start at 0 and each begins where
    /// the one before ends (no gap, no overlap); each range holds exactly dtype × shape bytes. Returns the header and
    /// the bytes of data it describes.
    pub fn parse(file: &str, json: &[u8]) -> Result<(Self, u64)> {
        let bad = |what: String| Error::file(file, format!("is not a valid safetensors file: {what}"));
        let text = std::str::from_utf8(json).map_err(|e| bad(format!("its header is not UTF-8 text ({e})")))?;
        let Entries(entries) =
            serde_json::from_str(text).map_err(|e| bad(format!("its header is not a JSON object of tensors ({e})")))?;
        let mut metadata = None;
        let mut tensors = Vec::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for (name, value) in entries {
            if !seen.insert(name.clone()) {
                return Err(Error::tensor(&name, format!("appears twice in the header of {file}")));
            }
            if name == "__metadata__" {
                metadata =
                    Some(serde_json::from_value(value).map_err(|e| {
                        bad(format!("its header's __metadata__ is not a map of strings to strings ({e})"))
                    })?);
                continue;
            }
            let raw: RawInfo = serde_json::from_value(value).map_err(|e| {
                Error::tensor(&name, format!("in {file} is not described by dtype, shape and data_offsets ({e})"))
            })?;
            let Some(&(_, dtype)) = DTYPES.iter().find(|(n, _)| *n == raw.dtype) else {
                return Err(Error::tensor(
                    &name,
                    format!(
                        "in {file} has dtype \"{}\", which safetensors does not define (it defines {}; this program \
                         reads F32, F16, BF16 and F64 weights)",
                        raw.dtype.chars().take(40).collect::<String>(),
                        DTYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            let shape = raw
                .shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| Error::tensor(&name, format!("in {file} has a dimension too large to address")))?;
            let (start, end) = raw.data_offsets;
            tensors.push((name, TensorInfo { dtype, shape, start, end }));
        }
        tensors.sort_by_key(|(_, t)| (t.start, t.end));
        let mut at = 0u64;
        for (name, t) in &tensors {
            if t.start != at || t.end < t.start {
                let why = if t.end < t.start {
                    format!("its range {}..{} ends before it starts", t.start, t.end)
                } else if t.start > at {
                    format!("a gap before it: data from byte {at} to {} belongs to no tensor", t.start)
                } else {
                    format!("its range {}..{} overlaps the tensor before it, which ends at {at}", t.start, t.end)
                };
                return Err(Error::tensor(name, format!("in {file}: invalid data offsets ({why})")));
            }
            let bits = t
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .and_then(|n| n.checked_mul(t.dtype.bitsize() as u64))
                .ok_or_else(|| Error::tensor(name, format!("in {file}: shape {:?} overflows", t.shape)))?;
            if bits % 8 != 0 || bits / 8 != t.bytes() {
                return Err(Error::tensor(
                    name,
                    format!(
                        "in {file}: {:?} × {:?} is {} bytes, but its data offsets hold {}",
                        t.dtype,
                        t.shape,
                        bits as f64 / 8.0,
                        t.bytes()
                    ),
                ));
            }
            at = t.end;
        }
        let by_name = tensors.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        Ok((Self { tensors, by_name, metadata }, at))
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i].1)
    }

    /// Tensor names in file order.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.iter().map(|(n, _)| n)
    }

    /// The free-form `__metadata__` map.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }
}

/// One `.safetensors` file, its header parsed, its tensors read on demand.
pub struct SafetensorsFile {
    source: Box<dyn ByteSource>,
    header: Header,
    data_start: u64,
}

impl SafetensorsFile {
    /// Read and check the header of `source`.
    pub fn open(source: Box<dyn ByteSource>) -> Result<Self> {
        let name = source.name().to_string();
        let len = source.len();
        if len < 8 {
            return Err(Error::file(&name, format!("is {len} bytes long, too short to be a safetensors file")));
        }
        let n = u64::from_le_bytes(
            source.read_at(0, 8)?.try_into().map_err(|_| Error::file(&name, "short read of the header length"))?,
        );
        if n > MAX_HEADER {
            return Err(Error::file(
                &name,
                format!(
                    "is not a safetensors file: its first 8 bytes give a header of {n} bytes, above the format's \
                     limit of {MAX_HEADER}"
                ),
            ));
        }
        if n + 8 > len {
            return Err(Error::file(
                &name,
                format!(
                    "is not a safetensors file, or is truncated: its first 8 bytes give a header of {n} bytes, but \
                     the file holds only {} bytes after them",
                    len - 8
                ),
            ));
        }
        let (header, data_len) = Header::parse(&name, &source.read_at(8, n as usize)?)?;
        let held = len - 8 - n;
        if data_len > held {
            // the first tensor whose data the file does not hold
            let (tensor, t) =
                header.tensors.iter().find(|(_, t)| t.end > held).ok_or_else(|| Error::file(&name, "is truncated"))?;
            return Err(Error::file(
                &name,
                format!(
                    "is truncated: the data of tensor `{tensor}` (bytes {}..{} after the header) runs past the end; \
                     the header describes {data_len} bytes of data, the file holds {held}",
                    t.start, t.end
                ),
            ));
        }
        if data_len < held {
            return Err(Error::file(
                &name,
                format!(
                    "is padded or damaged: the header describes {data_len} bytes of data, the file holds {held} \
                     ({} bytes after the last tensor belong to none)",
                    held - data_len
                ),
            ));
        }
        Ok(Self { source, header, data_start: 8 + n })
    }

    pub fn file_name(&self) -> &str {
        self.source.name()
    }

    pub fn file_len(&self) -> u64 {
        self.source.len()
    }

    /// Tensor names in file order.
    pub fn names(&self) -> Vec<String> {
        self.header.names().cloned().collect()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.info(name)
    }

    /// The free-form `__metadata__` map.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.header.metadata.as_ref()
    }

    /// Read one tensor from its byte range.
    pub fn read(&self, name: &str) -> Result<RawTensor> {
        let info = self.info(name).ok_or_else(|| Error::tensor(name, format!("not found in {}", self.file_name())))?;
        let len = usize::try_from(info.bytes()).map_err(|_| {
            Error::tensor(
                name,
                format!("in {} holds {} bytes, more than this build can address", self.file_name(), info.bytes()),
            )
        })?;
        let data = self.source.read_at(self.data_start + info.start, len)?;
        Ok(RawTensor { name: name.to_string(), dtype: info.dtype, shape: info.shape.clone(), data })
    }

    /// `len` bytes of tensor `name`'s data from byte `offset` of it.
    pub fn read_slice(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let info = self.info(name).ok_or_else(|| Error::tensor(name, format!("not found in {}", self.file_name())))?;
        if offset.checked_add(len as u64).is_none_or(|end| end > info.bytes()) {
            return Err(Error::tensor(name, format!("has {} bytes; bytes {offset}.. were asked for", info.bytes())));
        }
        self.source.read_at(self.data_start + info.start + offset, len)
    }
}

impl TensorFile for SafetensorsFile {
    fn file_name(&self) -> &str {
        SafetensorsFile::file_name(self)
    }
    fn file_len(&self) -> u64 {
        SafetensorsFile::file_len(self)
    }
    fn names(&self) -> Vec<String> {
        SafetensorsFile::names(self)
    }
    fn info(&self, name: &str) -> Option<&TensorInfo> {
        SafetensorsFile::info(self, name)
    }
    fn metadata(&self) -> Option<&HashMap<String, String>> {
        SafetensorsFile::metadata(self)
    }
    fn read(&self, name: &str) -> Result<RawTensor> {
        SafetensorsFile::read(self, name)
    }
    fn read_slice(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        SafetensorsFile::read_slice(self, name, offset, len)
    }
}
