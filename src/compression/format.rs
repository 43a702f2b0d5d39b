//! The compressed checkpoint format (see FORMAT.md): one safetensors file whose dense tensors are copied as they
//! were stored and whose compressed matrices are replaced by their INT8 (or f32) factors, with the policy, ranks,
//! source fingerprint, config.json and tokenizer.json in `__metadata__`. Loading it back keeps the INT8 codes as
//! INT8: a compressed model's resident bytes are its stored bytes.

use crate::compression::matrix::{Decision, Factored, LayerReport};
use crate::compression::policy::Policy;
use crate::model::bundle::is_buffer;
use crate::model::checkpoint::fingerprint;
use crate::model::checkpoint::Checkpoint;
use crate::model::gpt_neo::GptNeo;
use crate::model::linear::LinearWeight;
use crate::model::storage::Factor;
use crate::model::weights::{CompressedWeights, Weights, FORMAT};
use crate::{Error, Result};
use safetensors::Dtype;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

enum Part {
    /// Copied from the source checkpoint as stored.
    Source(String),
    Owned(Vec<u8>),
}

struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    len: u64,
    part: Part,
}

/// A compressed checkpoint ready to be written: its header and its data, in pieces (source tensors are read only
/// when written).
pub struct Export {
    header: Vec<u8>,
    entries: Vec<Entry>,
    /// Bytes of tensor data (the file is `8 + header + data`).
    pub data_bytes: u64,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn push(entries: &mut Vec<Entry>, name: String, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) {
    entries.push(Entry { name, dtype, shape, len: bytes.len() as u64, part: Part::Owned(bytes) });
}

/// Tensors for one factor called `base`: `{base}` (f32); or `{base}.q` (i8), `{base}.scale` (f32, per row or one)
/// and `{base}.zero_point` (i32, per-tensor scheme only); or group-wise codes as `{base}.codes` (u32, the bit stream),
/// `{base}.scales` (f16, rows × groups) and `{base}.layout` (i32: rows, columns, bits, group). `shape` is the factor's
/// logical shape.
fn push_factor(entries: &mut Vec<Entry>, base: &str, f: &Factor, shape: Vec<usize>) {
    match f {
        Factor::F32 { data, .. } => push(entries, base.to_string(), Dtype::F32, shape, f32_bytes(data)),
        Factor::Half { bits, bf16, .. } => {
            let dtype = if *bf16 { Dtype::BF16 } else { Dtype::F16 };
            push(entries, base.to_string(), dtype, shape, bits.iter().flat_map(|b| b.to_le_bytes()).collect())
        }
        Factor::Grouped(g) => {
            let words: Vec<u8> = g.codes.iter().flat_map(|w| w.to_le_bytes()).collect();
            push(entries, format!("{base}.codes"), Dtype::U32, vec![g.codes.len()], words);
            let scales: Vec<u8> = g.scales.iter().flat_map(|h| h.to_le_bytes()).collect();
            push(entries, format!("{base}.scales"), Dtype::F16, vec![g.rows, g.groups_per_row()], scales);
            let layout: Vec<u8> =
                [g.rows, g.cols, g.bits as usize, g.group].iter().flat_map(|&v| (v as i32).to_le_bytes()).collect();
            push(entries, format!("{base}.layout"), Dtype::I32, vec![4], layout);
        }
        Factor::Int8(q) => {
            push(entries, format!("{base}.q"), Dtype::I8, shape, q.codes.iter().map(|&c| c as u8).collect());
            push(entries, format!("{base}.scale"), Dtype::F32, vec![q.scales.len()], f32_bytes(&q.scales));
            if !q.zero_points.is_empty() {
                let zp: Vec<u8> = q.zero_points.iter().flat_map(|z| z.to_le_bytes()).collect();
                push(entries, format!("{base}.zero_point"), Dtype::I32, vec![q.zero_points.len()], zp);
            }
        }
    }
}

/// The tensors of one replaced weight `name` (see [`push_factor`]).
fn push_weight(entries: &mut Vec<Entry>, name: &str, w: &LinearWeight) -> Result<()> {
    match w {
        LinearWeight::LowRank { u, s, vh } => {
            let r = s.cols();
            push_factor(entries, &format!("{name}.U"), u, vec![u.rows(), r]);
            push_factor(entries, &format!("{name}.S"), s, vec![r]);
            push_factor(entries, &format!("{name}.Vh"), vh, vec![r, vh.cols()]);
        }
        LinearWeight::Matrix(f) => push_factor(entries, name, f, vec![f.rows(), f.cols()]),
        LinearWeight::Dense(_) => {
            return Err(Error::tensor(name, "a dense replacement cannot be exported; keep the source tensor"))
        }
    }
    Ok(())
}

/// The header (padded to 8 bytes) for `entries` laid out in order, and the bytes of data they take.
fn header(metadata: &BTreeMap<String, String>, entries: &[Entry]) -> Result<(Vec<u8>, u64)> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    let mut offset = 0u64;
    for e in entries {
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": format!("{:?}", e.dtype), "shape": e.shape, "data_offsets": [offset, offset + e.len]}),
        );
        offset += e.len;
    }
    let mut header = serde_json::to_vec(&header)?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    Ok((header, offset))
}

/// A matrix factored in one worker, as bytes for another ([`decode_factored`]): a safetensors file whose tensors
/// are its factors under the compressed format's own names, with its index and report in `__metadata__`. Reading it
/// back goes through the same reader as a compressed checkpoint, so INT8 stays INT8 on the way.
pub fn encode_factored(f: &Factored) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    if let Some(w) = &f.weight {
        push_weight(&mut entries, &f.report.name, w)?;
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("index".to_string(), f.index.to_string());
    metadata.insert("report".to_string(), serde_json::to_string(&f.report)?);
    let (header, data_bytes) = header(&metadata, &entries)?;
    let mut out = Vec::with_capacity(8 + header.len() + data_bytes as usize);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for e in &entries {
        if let Part::Owned(b) = &e.part {
            out.extend_from_slice(b);
        }
    }
    Ok(out)
}

/// The matrix [`encode_factored`] wrote.
pub fn decode_factored(bytes: Vec<u8>) -> Result<Factored> {
    const NAME: &str = "a factored matrix from another worker";
    let file = crate::model::checkpoint::SafetensorsFile::open(Box::new(crate::model::checkpoint::MemSource::new(
        NAME, bytes,
    )))?;
    let ckpt = Checkpoint::new(vec![file], None)?;
    let meta = |k: &str| ckpt.metadata().and_then(|m| m.get(k)).ok_or_else(|| Error::file(NAME, format!("has no {k}")));
    let index = meta("index")?.parse().map_err(|_| Error::file(NAME, "has a bad index"))?;
    let report: LayerReport = serde_json::from_str(meta("report")?)?;
    let weight = match report.decision {
        Decision::Dense => None,
        _ => Some(CompressedWeights { ckpt: &ckpt }.linear(&report.name, report.shape[0], report.shape[1])?),
    };
    Ok(Factored { index, report, weight })
}

#[derive(Serialize)]
struct LayerMeta<'a> {
    storage: &'a str,
    rank: Option<usize>,
    err_svd: Option<f64>,
    err_stored: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    err_activations: Option<f64>,
}

/// What the export records about its source.
#[derive(Serialize)]
struct SourceMeta {
    fingerprint: String,
    parameters: usize,
    file_bytes: u64,
    files: Vec<String>,
}

impl Export {
    /// Plan the compressed checkpoint of `ckpt` with `weights` replacing the named linear layers.
    pub fn new(
        ckpt: &Checkpoint,
        config_json: &str,
        tokenizer_json: Option<&str>,
        weights: &HashMap<String, LinearWeight>,
        reports: &[LayerReport],
        policy: &Policy,
    ) -> Result<Self> {
        let mut entries = Vec::new();
        let mut parameters = 0usize;
        for name in ckpt.names() {
            if is_buffer(name) {
                continue;
            }
            let info = ckpt.info(name).ok_or_else(|| Error::tensor(name, "vanished from the checkpoint"))?;
            parameters += info.numel() as usize;
            match weights.get(name) {
                None => entries.push(Entry {
                    name: name.clone(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    len: info.bytes(),
                    part: Part::Source(name.clone()),
                }),
                Some(w) => push_weight(&mut entries, name, w)?,
            }
        }
        let layers: BTreeMap<&str, LayerMeta> = reports
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    LayerMeta {
                        storage: &r.storage,
                        rank: r.rank,
                        err_svd: r.err_svd,
                        err_stored: r.err_stored,
                        err_activations: r.err_activations,
                    },
                )
            })
            .collect();
        let source = SourceMeta {
            fingerprint: fingerprint(ckpt),
            parameters,
            file_bytes: ckpt.file_bytes(),
            files: ckpt
                .files()
                .iter()
                .map(|f| f.file_name().rsplit(['/', '\\']).next().unwrap_or("").to_string())
                .collect(),
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), FORMAT.to_string());
        metadata.insert("producer".to_string(), format!("semantic-llm-compressor {}", env!("CARGO_PKG_VERSION")));
        metadata.insert("policy".to_string(), serde_json::to_string(policy)?);
        metadata.insert("layers".to_string(), serde_json::to_string(&layers)?);
        metadata.insert("source".to_string(), serde_json::to_string(&source)?);
        metadata.insert("config_json".to_string(), config_json.to_string());
        if let Some(t) = tokenizer_json {
            metadata.insert("tokenizer_json".to_string(), t.to_string());
        }
        let (header, data_bytes) = header(&metadata, &entries)?;
        Ok(Self { header, entries, data_bytes })
    }

    /// Total file size.
    pub fn file_bytes(&self) -> u64 {
        8 + self.header.len() as u64 + self.data_bytes
    }

    /// Hand the file to `sink` in pieces: the length, the header, then every tensor (source tensors read one at a
    /// time).
    pub fn write(&self, ckpt: &Checkpoint, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        sink(&(self.header.len() as u64).to_le_bytes())?;
        sink(&self.header)?;
        for e in &self.entries {
            match &e.part {
                Part::Owned(b) => sink(b)?,
                Part::Source(n) => {
                    let raw = ckpt.read(n)?;
                    if raw.data.len() as u64 != e.len {
                        return Err(Error::tensor(n, "changed size while being exported"));
                    }
                    sink(&raw.data)?
                }
            }
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self, ckpt: &Checkpoint) -> Result<Vec<u8>> {
        let size = usize::try_from(self.file_bytes()).map_err(|_| {
            Error::Memory(format!("the compressed file of {} bytes cannot be held in memory", self.file_bytes()))
        })?;
        let mut out = Vec::with_capacity(size);
        self.write(ckpt, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Every linear layer of a (compressed) model as dense f32, by tensor name: what `slc densify` writes so that
/// transformers can load the result.
/// A tensor as (name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

pub fn densify(model: &GptNeo) -> Result<Vec<NamedTensor>> {
    model
        .linears()
        .into_iter()
        .filter(|l| !l.weight.is_dense())
        .map(|l| {
            let (o, i) = l.weight.shape()?;
            Ok((l.name.clone(), vec![o, i], l.weight.to_dense_f32()?))
        })
        .collect()
}
