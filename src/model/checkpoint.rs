//! Reading safetensors checkpoints by byte ranges.
//!
//! A [`SafetensorsFile`] reads only the 8-byte length and the JSON header when it is opened; each tensor is then read
//! on its own from its byte range of a [`ByteSource`]. In the browser that source is a `File` read in slices inside a
//! worker, so a checkpoint larger than wasm memory can still be walked tensor by tensor. A [`Checkpoint`] joins the
//! shards of `model.safetensors.index.json` into one namespace.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, HashMap};

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
        let start = usize::try_from(offset).map_err(|_| Error::file(&self.name, "offset out of range"))?;
        let end = start.checked_add(len).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            Error::file(
                &self.name,
                format!("read of {len} bytes at {offset} runs past the end ({} bytes)", self.bytes.len()),
            )
        })?;
        Ok(self.bytes[start..end].to_vec())
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
        if offset.checked_add(len as u64).is_none_or(|end| end > self.len) {
            return Err(Error::file(
                &self.name,
                format!("read of {len} bytes at {offset} runs past the end ({} bytes)", self.len),
            ));
        }
        let mut buf = vec![0u8; len];
        let mut f = self.file.lock().map_err(|_| Error::file(&self.name, "file lock poisoned"))?;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf).map_err(|e| Error::file(&self.name, format!("read failed ({e})")))?;
        Ok(buf)
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

    /// The values as an f32 candle tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.to_f32_vec()?, self.shape.clone(), &Device::Cpu)?)
    }
}

/// The largest header we accept (safetensors' own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

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
}

/// A whole checkpoint: one file, or the shards listed by `model.safetensors.index.json`.
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Join already opened files. With `index_json` (the text of `model.safetensors.index.json`), every shard it names
    /// must be among `files` (matched by the last path component) and every tensor must be where it says.
    pub fn new(files: Vec<SafetensorsFile>, index_json: Option<&str>) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::msg("no .safetensors file was given"));
        }
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.names() {
                if let Some(&j) = index.get(&name) {
                    return Err(Error::tensor(
                        &name,
                        format!("appears in both {} and {}", files[j].file_name(), f.file_name()),
                    ));
                }
                index.insert(name, i);
            }
        }
        if let Some(text) = index_json {
            let idx: ShardIndex = serde_json::from_str(text)
                .map_err(|e| Error::file("model.safetensors.index.json", format!("cannot be parsed ({e})")))?;
            let base = |p: &str| p.rsplit(['/', '\\']).next().unwrap_or(p).to_string();
            for (tensor, shard) in &idx.weight_map {
                let Some(pos) = files.iter().position(|f| base(f.file_name()) == base(shard)) else {
                    return Err(Error::file(
                        shard.clone(),
                        format!("is listed in model.safetensors.index.json (for `{tensor}`) but was not given"),
                    ));
                };
                if index.get(tensor) != Some(&pos) {
                    return Err(Error::tensor(
                        tensor,
                        format!("model.safetensors.index.json puts it in {shard}, which does not hold it"),
                    ));
                }
            }
        }
        Ok(Self { files, index })
    }

    /// Open a checkpoint directory: `model.safetensors`, or the shards of `model.safetensors.index.json`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| Error::file(index_path.display().to_string(), e.to_string()))?;
            let idx: ShardIndex = serde_json::from_str(&text)
                .map_err(|e| Error::file(index_path.display().to_string(), format!("cannot be parsed ({e})")))?;
            let shards: std::collections::BTreeSet<&String> = idx.weight_map.values().collect();
            let files = shards
                .into_iter()
                .map(|s| SafetensorsFile::open(Box::new(FileSource::open(&dir.join(s))?)))
                .collect::<Result<Vec<_>>>()?;
            return Self::new(files, Some(&text));
        }
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(Error::file(
                dir.display().to_string(),
                "holds neither model.safetensors nor model.safetensors.index.json",
            ));
        }
        Self::new(vec![SafetensorsFile::open(Box::new(FileSource::open(&single)?))?], None)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.files[i].info(name))
    }

    pub fn read(&self, name: &str) -> Result<RawTensor> {
        let &i = self.index.get(name).ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
        self.files[i].read(name)
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The `__metadata__` of the first file.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.files[0].metadata()
    }

    /// Sum of the files' sizes.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.file_len()).sum()
    }
}

/// A fingerprint of a checkpoint's tensor table: SHA-256 over every tensor's name, dtype, shape and byte range, and
/// the files' sizes. Cheap (no weights are read) and changes whenever the layout does.
pub fn fingerprint(ckpt: &Checkpoint) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for name in ckpt.names() {
        if let Some(i) = ckpt.info(name) {
            h.update(format!("{name}|{:?}|{:?}|({}, {})\n", i.dtype, i.shape, i.start, i.end).as_bytes());
        }
    }
    for f in ckpt.files() {
        h.update(f.file_len().to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The token embedding's tensor name in this checkpoint (`transformer.wte.weight` or `wte.weight`).
pub fn embedding_name(ckpt: &Checkpoint) -> String {
    if ckpt.contains("transformer.wte.weight") { "transformer.wte.weight" } else { "wte.weight" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn reads_tensors_by_range_and_converts_halves() {
        let h: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let b: Vec<u8> = [0.25f32].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let f: Vec<u8> = [3.0f32, 4.0, 5.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bytes = file_with(vec![
            ("a", Dtype::F16, vec![2], h),
            ("b", Dtype::BF16, vec![1], b),
            ("c", Dtype::F32, vec![3], f),
        ]);
        let st = SafetensorsFile::open(Box::new(MemSource::new("m.safetensors", bytes))).unwrap();
        assert_eq!(st.read("a").unwrap().to_f32_vec().unwrap(), vec![1.5, -2.0]);
        assert_eq!(st.read("b").unwrap().to_f32_vec().unwrap(), vec![0.25]);
        assert_eq!(st.read("c").unwrap().to_f32_vec().unwrap(), vec![3.0, 4.0, 5.0]);
        assert_eq!(st.read("a").unwrap().to_tensor().unwrap().dtype(), candle_core::DType::F32);
        let e = st.read("zz").unwrap_err().to_string();
        assert!(e.contains("zz") && e.contains("m.safetensors"), "{e}");
    }

    #[test]
    fn rejects_truncated_and_garbage_files() {
        let f: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut bytes = file_with(vec![("c", Dtype::F32, vec![2], f)]);
        bytes.pop();
        let e = SafetensorsFile::open(Box::new(MemSource::new("cut.safetensors", bytes))).err().unwrap().to_string();
        assert!(e.starts_with("cut.safetensors") && e.contains("truncated"), "{e}");
        let e = SafetensorsFile::open(Box::new(MemSource::new("x.safetensors", b"hello world, not a file".to_vec())))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("x.safetensors"), "{e}");
        let e = SafetensorsFile::open(Box::new(MemSource::new("t", vec![1, 2]))).err().unwrap().to_string();
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn shards_join_and_index_is_checked() {
        let one = |n: &str| file_with(vec![(n, Dtype::F32, vec![1], 1f32.to_le_bytes().to_vec())]);
        let open = |f: &str, n: &str| SafetensorsFile::open(Box::new(MemSource::new(f, one(n)))).unwrap();
        let idx = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
        let ck = Checkpoint::new(
            vec![open("model-00001-of-00002.safetensors", "a"), open("model-00002-of-00002.safetensors", "b")],
            Some(idx),
        )
        .unwrap();
        assert_eq!(ck.names().cloned().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(ck.read("b").unwrap().to_f32_vec().unwrap(), vec![1.0]);
        let e =
            Checkpoint::new(vec![open("model-00001-of-00002.safetensors", "a")], Some(idx)).err().unwrap().to_string();
        assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("not given"), "{e}");
        let e = Checkpoint::new(vec![open("x1", "a"), open("x2", "a")], None).err().unwrap().to_string();
        assert!(e.contains("`a`") && e.contains("both"), "{e}");
    }

    #[test]
    fn header_offsets_are_u64_and_checked_like_the_crate() {
        // a 4.3 GB buffer before the weights: offsets past 4 GiB, as in a 5.3 GB f32 checkpoint
        let big = 4_303_360_000u64;
        let json = format!(
            r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F32","shape":[2,3],"data_offsets":[{big},{}]}},"h.0.attn.attention.bias":{{"dtype":"BOOL","shape":[1,1,65600,65600],"data_offsets":[0,{big}]}}}}"#,
            big + 24
        );
        let (h, data) = Header::parse("m.safetensors", json.as_bytes()).unwrap();
        assert_eq!(data, big + 24);
        assert_eq!(h.names().cloned().collect::<Vec<_>>(), vec!["h.0.attn.attention.bias", "w"]);
        assert_eq!(
            h.info("w").unwrap(),
            &TensorInfo { dtype: Dtype::F32, shape: vec![2, 3], start: big, end: big + 24 }
        );
        assert_eq!(h.info("h.0.attn.attention.bias").unwrap().numel(), big);
        assert_eq!(h.metadata.as_ref().unwrap()["format"], "pt");

        let check = |json: &str, needles: &[&str]| {
            let e = Header::parse("m.safetensors", json.as_bytes()).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{e} lacks {n}");
            }
        };
        // a gap, an overlap, a range ending before it starts, a size that is not dtype × shape
        check(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &["`a`", "gap"]);
        check(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &["`b`", "overlaps"],
        );
        check(
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"c":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
            &["`c`"],
        );
        check(r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#, &["`a`", "F16", "6 bytes", "hold 8"]);
        check(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
            &["`a`", "overflows"],
        );
        check(r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#, &["m.safetensors", "`a`"]);
        check(r#"{"a":{"dtype":"F32","shape":[1]}}"#, &["m.safetensors", "`a`", "data_offsets"]);
        check("[1,2]", &["m.safetensors", "not a JSON object"]);
        let e = Header::parse("m.safetensors", b"{\"a\xff").unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("UTF-8"), "{e}");
        // every file the crate accepts reads the same here
        let f: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bytes = file_with(vec![("z", Dtype::F32, vec![2], f.clone()), ("a", Dtype::I8, vec![3], vec![1, 2, 3])]);
        let (_, crate_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let st = SafetensorsFile::open(Box::new(MemSource::new("m", bytes.clone()))).unwrap();
        assert_eq!(st.names(), crate_meta.offset_keys());
        for n in st.names() {
            let (ours, theirs) = (st.info(&n).unwrap(), crate_meta.info(&n).unwrap());
            assert_eq!((ours.dtype, &ours.shape), (theirs.dtype, &theirs.shape));
            assert_eq!((ours.start, ours.end), (theirs.data_offsets.0 as u64, theirs.data_offsets.1 as u64));
        }
    }
}
