//! Where a model's tensors come from, behind one trait: a plain checkpoint (f32, or 16-bit halves kept as stored), a
//! checkpoint with some layers replaced by compressed storage while compressing, or a compressed checkpoint read
//! back from its file (the format of FORMAT.md: INT8 factors stay INT8). The model code asks for tensors by name and
//! never knows which it got.

use crate::model::checkpoint::Checkpoint;
use crate::model::grouped::GMat;
use crate::model::linear::LinearWeight;
use crate::model::storage::{Factor, QMat};
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

/// Where the model's tensors come from: a checkpoint, or a compressed checkpoint that stores some linear layers as
/// INT8 factors.
pub trait Weights {
    fn contains(&self, name: &str) -> bool;
    /// A dense tensor with the given shape (f32, or f16/bf16 if the source keeps halves).
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// The weight of a linear layer, `[out, inp]`.
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        Ok(LinearWeight::Dense(self.dense(name, &[out, inp])?))
    }
}

/// How a plain checkpoint's linear layers are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything converted to f32 once at load.
    F32,
    /// F16/BF16 matrices kept as stored (half the memory; each forward converts blocks of rows), the rest f32.
    AsStored,
    /// Every linear matrix in 16 bits: F16/BF16 as stored, F32 converted to f16 (the original of a model whose f32
    /// weights do not fit, e.g. GPT-Neo-1.3B's 5.3 GB in a 4 GiB tab). The position embedding stays f32.
    F16,
}

/// A plain checkpoint as [`Weights`], its linear layers held at `precision`.
pub struct CheckpointWeights<'a> {
    pub ckpt: &'a Checkpoint,
    pub precision: Precision,
}

impl Weights for CheckpointWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let info = self.ckpt.info(name).ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
        check_shape(name, &info.shape, shape)?;
        self.ckpt.read(name)?.to_tensor()
    }
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        let info = self.ckpt.info(name).ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
        check_shape(name, &info.shape, &[out, inp])?;
        let raw = self.ckpt.read(name)?;
        if self.precision != Precision::F32 {
            if let Some(f) = raw.to_half_factor()? {
                return Ok(LinearWeight::Matrix(std::sync::Arc::new(f)));
            }
        }
        if self.precision == Precision::F16 {
            let bits: Vec<u16> = raw.to_f32_vec()?.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
            if let Some(i) = bits.iter().position(|&h| crate::model::storage::f16_is_non_finite(h)) {
                return Err(Error::tensor(name, format!("element {i} is too large for f16")));
            }
            let f = Factor::Half { rows: out, cols: inp, bits, bf16: false };
            return Ok(LinearWeight::Matrix(std::sync::Arc::new(f)));
        }
        Ok(LinearWeight::Dense(raw.to_tensor()?))
    }
}

/// [`Weights`] that report each tensor they hand out, for a progress bar while a model loads.
pub struct WithProgress<'a> {
    pub inner: &'a dyn Weights,
    pub done: std::cell::Cell<usize>,
    pub report: &'a dyn Fn(usize, &str),
}

impl WithProgress<'_> {
    fn tick(&self, name: &str) {
        self.done.set(self.done.get() + 1);
        (self.report)(self.done.get(), name);
    }
}

impl Weights for WithProgress<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.inner.dense(name, shape)?;
        self.tick(name);
        Ok(t)
    }
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        let w = self.inner.linear(name, out, inp)?;
        self.tick(name);
        Ok(w)
    }
}

/// An error unless `found == expected`, naming the tensor and both shapes.
pub fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::tensor(name, format!("has shape {found:?} but config.json implies {expected:?}")));
    }
    Ok(())
}

/// The name prefix of a checkpoint's tensors: `transformer.` (Hugging Face) or none.
pub fn tensor_prefix(w: &dyn Weights) -> Result<&'static str> {
    if w.contains("transformer.wte.weight") {
        Ok("transformer.")
    } else if w.contains("wte.weight") {
        Ok("")
    } else {
        Err(Error::tensor("transformer.wte.weight", "is missing: this does not look like a GPT-Neo checkpoint"))
    }
}

/// A checkpoint with some linear layers replaced by compressed storage. Dense tensors keep the dtype they are
/// stored in, exactly as when an exported compressed checkpoint is loaded back.
pub struct Overlay<'a> {
    pub base: CheckpointWeights<'a>,
    pub replaced: &'a HashMap<String, LinearWeight>,
}

impl Weights for Overlay<'_> {
    fn contains(&self, name: &str) -> bool {
        self.replaced.contains_key(name) || self.base.contains(name)
    }
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.base.dense(name, shape)
    }
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        match self.replaced.get(name) {
            Some(w) => {
                check_shape(
                    name,
                    &{
                        let (o, i) = w.shape()?;
                        [o, i]
                    },
                    &[out, inp],
                )?;
                Ok(w.clone())
            }
            None => self.base.linear(name, out, inp),
        }
    }
}

/// The `format` metadata value of a compressed checkpoint (FORMAT.md).
pub const FORMAT: &str = "slc-compressed-v1";

pub fn is_compressed(ckpt: &Checkpoint) -> bool {
    ckpt.metadata().and_then(|m| m.get("format")).is_some_and(|f| f.starts_with("slc-compressed"))
}

/// A compressed checkpoint's metadata, checked before anything is read by it: the format is one this build reads,
/// and every record it carries (`layers`, `policy`, `source`) is JSON of the expected form (the policy's values are
/// checked by the session, which knows policies). A damaged record is
/// refused naming its key, rather than silently showing a report without it.
pub fn check_compressed_metadata(ckpt: &Checkpoint) -> Result<()> {
    let file = ckpt.files().first().map(|f| f.file_name().to_string()).unwrap_or_default();
    let format = meta(ckpt, "format").unwrap_or_default();
    if format != FORMAT {
        return Err(Error::file(
            &file,
            format!("was written in format \"{format}\"; this build reads \"{FORMAT}\" (FORMAT.md)"),
        ));
    }
    let bad = |key: &str, what: &str, e: &dyn std::fmt::Display| {
        Error::file(&file, format!("has damaged metadata: `{key}` is not {what} ({e})"))
    };
    if let Some(v) = meta(ckpt, "layers") {
        serde_json::from_str::<HashMap<String, serde_json::Value>>(&v)
            .map_err(|e| bad("layers", "a JSON object of layer records", &e))?;
    }
    if let Some(v) = meta(ckpt, "policy") {
        // its fields are the compression's to check (the session does, when it reads it)
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&v)
            .map_err(|e| bad("policy", "a JSON object", &e))?;
    }
    match meta(ckpt, "source") {
        Some(v) => {
            #[derive(serde::Deserialize)]
            #[allow(dead_code)]
            struct Source {
                fingerprint: String,
                parameters: u64,
                file_bytes: u64,
            }
            serde_json::from_str::<Source>(&v).map_err(|e| bad("source", "a record of the original model", &e))?;
        }
        None => {
            return Err(Error::file(&file, "has damaged metadata: `source` (the original it was made from) is missing"))
        }
    }
    Ok(())
}

fn meta(ckpt: &Checkpoint, key: &str) -> Option<String> {
    ckpt.metadata().and_then(|m| m.get(key)).cloned()
}

/// config.json carried inside a compressed checkpoint.
pub fn embedded_config(ckpt: &Checkpoint) -> Option<String> {
    meta(ckpt, "config_json")
}

/// tokenizer.json carried inside a compressed checkpoint.
pub fn embedded_tokenizer(ckpt: &Checkpoint) -> Option<String> {
    meta(ckpt, "tokenizer_json")
}

/// The source model's parameter count, as recorded at export.
pub fn original_parameters(ckpt: &Checkpoint) -> Option<usize> {
    let src: serde_json::Value = serde_json::from_str(&meta(ckpt, "source")?).ok()?;
    src.get("parameters")?.as_u64().map(|x| x as usize)
}

/// A compressed checkpoint as [`Weights`]: factors stay INT8, dense tensors keep their stored dtype.
pub struct CompressedWeights<'a> {
    pub ckpt: &'a Checkpoint,
}

impl CompressedWeights<'_> {
    fn factor(&self, base: &str, rows: Option<usize>, cols: Option<usize>) -> Result<Factor> {
        let q_name = format!("{base}.q");
        let codes_name = format!("{base}.codes");
        let (raw_shape, f) = if self.ckpt.contains(&codes_name) {
            let layout_name = format!("{base}.layout");
            let layout = self.ckpt.read(&layout_name)?.to_i32_vec()?;
            let [r, c, bits, group] = layout[..] else {
                return Err(Error::tensor(&layout_name, "should hold 4 numbers: rows, columns, bits, group"));
            };
            let size = |v: i32| usize::try_from(v).map_err(|_| Error::tensor(&layout_name, format!("holds {v}")));
            let (r, c, group) = (size(r)?, size(c)?, size(group)?);
            let bits = u8::try_from(bits).map_err(|_| Error::tensor(&layout_name, format!("holds {bits} bits")))?;
            let g = GMat {
                rows: r,
                cols: c,
                bits,
                group,
                codes: self.ckpt.read(&codes_name)?.to_u32_vec()?,
                scales: self.ckpt.read(&format!("{base}.scales"))?.to_f16_bits()?,
            };
            g.validate(&codes_name)?;
            (vec![r, c], Factor::Grouped(g))
        } else if self.ckpt.contains(&q_name) {
            let codes = self.ckpt.read(&q_name)?;
            let shape = codes.shape.clone();
            let scales = self.ckpt.read(&format!("{base}.scale"))?.to_f32_vec()?;
            let zp_name = format!("{base}.zero_point");
            let zero_points =
                if self.ckpt.contains(&zp_name) { self.ckpt.read(&zp_name)?.to_i32_vec()? } else { vec![] };
            let (r, c) = dims2(&q_name, &shape)?;
            let q = QMat { rows: r, cols: c, codes: codes.to_i8_vec()?, scales, zero_points };
            q.validate(&q_name)?;
            (shape, Factor::Int8(q))
        } else {
            let raw = self.ckpt.read(base)?;
            let (r, c) = dims2(base, &raw.shape)?;
            (raw.shape.clone(), Factor::F32 { rows: r, cols: c, data: raw.to_f32_vec()? })
        };
        if rows.is_some_and(|r| r != f.rows()) || cols.is_some_and(|c| c != f.cols()) {
            return Err(Error::tensor(base, format!("has shape {raw_shape:?}, which does not fit the layer")));
        }
        Ok(f)
    }
}

/// A 1-D shape [n] is read as 1 × n (the singular values).
fn dims2(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [n] => Ok((1, *n)),
        [r, c] => Ok((*r, *c)),
        _ => Err(Error::tensor(name, format!("has shape {shape:?}; a factor is 1-D or 2-D"))),
    }
}

impl Weights for CompressedWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(name)
            || self.ckpt.contains(&format!("{name}.U.q"))
            || self.ckpt.contains(&format!("{name}.U.codes"))
            || self.ckpt.contains(&format!("{name}.U"))
            || self.ckpt.contains(&format!("{name}.q"))
            || self.ckpt.contains(&format!("{name}.codes"))
    }
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        CheckpointWeights { ckpt: self.ckpt, precision: Precision::AsStored }.dense(name, shape)
    }
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        let u_base = format!("{name}.U");
        if self.ckpt.contains(&format!("{u_base}.q"))
            || self.ckpt.contains(&format!("{u_base}.codes"))
            || self.ckpt.contains(&u_base)
        {
            let u = self.factor(&u_base, Some(out), None)?;
            let r = u.cols();
            if r == 0 || r > out.min(inp) {
                return Err(Error::tensor(
                    &u_base,
                    format!("has rank {r}, but a {out}×{inp} layer has ranks 1 to {} only", out.min(inp)),
                ));
            }
            let s = self.factor(&format!("{name}.S"), Some(1), Some(r))?;
            let vh = self.factor(&format!("{name}.Vh"), Some(r), Some(inp))?;
            return Ok(LinearWeight::LowRank { u: Arc::new(u), s: Arc::new(s), vh: Arc::new(vh) });
        }
        if self.ckpt.contains(&format!("{name}.q")) || self.ckpt.contains(&format!("{name}.codes")) {
            return Ok(LinearWeight::Matrix(Arc::new(self.factor(name, Some(out), Some(inp))?)));
        }
        CheckpointWeights { ckpt: self.ckpt, precision: Precision::AsStored }.linear(name, out, inp)
    }
}
