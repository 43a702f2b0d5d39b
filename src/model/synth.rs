//! Random-weight GPT-Neo checkpoints of any shape, for benchmarks and large-file tests (`slc synth`).
//!
//! Trained weight matrices are not white noise: their singular values decay, so a rank-128 truncation of a
//! 2048 × 2048 GPT-Neo-1.3B projection keeps about a fifth of its energy (the origin report's per-layer error of
//! 78–84%). A synthetic matrix here is a low-rank part plus noise,
//!
//! ```text
//! W = σ · ( √(1−ν) · A diag(s) B / ‖A diag(s) B‖ · √(mn)  +  √ν · N ),     s_i = (i + 1)^(−1/2),  i < k = min(m, n)/8
//! ```
//!
//! with A, B, N independent standard normal (A m × k, B k × n, N m × n), ν = 0.6 the noise's share of the energy
//! and σ = 0.02 (GPT-Neo's initializer range) the entries' root mean square. Layer norms are 1 + noise, biases
//! small noise. Everything follows from the seed, tensor by tensor, so a 5.3 GB file is written without holding more
//! than one tensor.

use crate::model::checkpoint::TensorInfo;
use crate::model::config::GptNeoConfig;
use crate::model::generate::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use safetensors::Dtype;

/// Entries' root mean square of every weight matrix (GPT-Neo's `initializer_range`).
const SIGMA: f32 = 0.02;
/// The noise's share of a matrix's energy.
const NOISE_SHARE: f32 = 0.6;

/// What a synthetic tensor holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Low-rank part plus noise (every matrix).
    Matrix,
    /// 1 + small noise (layer-norm weights).
    Ones,
    /// Small noise (biases).
    Small,
}

/// One tensor of the checkpoint: its name, shape and kind.
struct Spec {
    name: String,
    shape: Vec<usize>,
    kind: Kind,
}

/// Every tensor of a GPT-Neo checkpoint with `cfg`'s shape, in the order Hugging Face writes them.
fn specs(cfg: &GptNeoConfig) -> Vec<Spec> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size());
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, kind| out.push(Spec { name, shape, kind });
    push("transformer.wte.weight".into(), vec![cfg.vocab_size, h], Kind::Matrix);
    push("transformer.wpe.weight".into(), vec![cfg.max_position_embeddings, h], Kind::Matrix);
    for l in 0..cfg.num_layers {
        let p = format!("transformer.h.{l}");
        push(format!("{p}.ln_1.weight"), vec![h], Kind::Ones);
        push(format!("{p}.ln_1.bias"), vec![h], Kind::Small);
        for m in ["k_proj", "v_proj", "q_proj"] {
            push(format!("{p}.attn.attention.{m}.weight"), vec![h, h], Kind::Matrix);
        }
        push(format!("{p}.attn.attention.out_proj.weight"), vec![h, h], Kind::Matrix);
        push(format!("{p}.attn.attention.out_proj.bias"), vec![h], Kind::Small);
        push(format!("{p}.ln_2.weight"), vec![h], Kind::Ones);
        push(format!("{p}.ln_2.bias"), vec![h], Kind::Small);
        push(format!("{p}.mlp.c_fc.weight"), vec![i, h], Kind::Matrix);
        push(format!("{p}.mlp.c_fc.bias"), vec![i], Kind::Small);
        push(format!("{p}.mlp.c_proj.weight"), vec![h, i], Kind::Matrix);
        push(format!("{p}.mlp.c_proj.bias"), vec![h], Kind::Small);
    }
    push("transformer.ln_f.weight".into(), vec![h], Kind::Ones);
    push("transformer.ln_f.bias".into(), vec![h], Kind::Small);
    out
}

fn normals(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.approx_normal() * scale).collect()
}

/// The values of one tensor, from its own seed.
fn values(spec: &Spec, seed: u64) -> Result<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let n: usize = spec.shape.iter().product();
    Ok(match spec.kind {
        Kind::Ones => normals(&mut rng, n, 0.05).into_iter().map(|x| 1.0 + x).collect(),
        Kind::Small => normals(&mut rng, n, 0.01),
        Kind::Matrix => {
            let (m, c) = (spec.shape[0], spec.shape[1]);
            let k = (m.min(c) / 8).max(1);
            let s: Vec<f32> = (0..k).map(|i| 1.0 / ((i + 1) as f32).sqrt()).collect();
            let a = Tensor::from_vec(normals(&mut rng, m * k, 1.0), (m, k), &Device::Cpu)?;
            let a = a.broadcast_mul(&Tensor::from_vec(s, (1, k), &Device::Cpu)?)?;
            let b = Tensor::from_vec(normals(&mut rng, k * c, 1.0), (k, c), &Device::Cpu)?;
            let low = a.matmul(&b)?;
            let norm = low.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
            let low_scale = SIGMA * (1.0 - NOISE_SHARE).sqrt() * ((m * c) as f32).sqrt() / norm.max(f32::MIN_POSITIVE);
            let noise_scale = SIGMA * NOISE_SHARE.sqrt();
            let mut w = low.flatten_all()?.to_vec1::<f32>()?;
            for x in w.iter_mut() {
                *x = *x * low_scale + rng.approx_normal() * noise_scale;
            }
            w
        }
    })
}

/// One synthetic `m × n` weight matrix (row-major), as every matrix of a synthetic checkpoint is made: what SVD
/// benchmarks and tests use as a trained-like spectrum.
pub fn matrix(m: usize, n: usize, seed: u64) -> Result<Vec<f32>> {
    values(&Spec { name: String::new(), shape: vec![m, n], kind: Kind::Matrix }, seed)
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

/// A synthetic checkpoint: what to write, in order.
pub struct Synth {
    specs: Vec<Spec>,
    dtype: Dtype,
    seed: u64,
    /// Bytes of an ignored buffer tensor (`transformer.h.0.attn.attention.bias`, U8) placed before the weights.
    pad: u64,
}

/// The buffer tensor that pads a checkpoint (ignored by every reader of GPT-Neo).
pub const PAD_TENSOR: &str = "transformer.h.0.attn.attention.bias";

impl Synth {
    /// Plan a checkpoint for `cfg` in `dtype` (F32, F16 or BF16), with a leading buffer of `pad` bytes of zeros
    /// (0 for none) that puts every weight past that offset.
    pub fn new(cfg: &GptNeoConfig, dtype: Dtype, seed: u64, pad: u64) -> Result<Self> {
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(Error::Policy(format!("dtype {dtype:?}: a synthetic checkpoint is F32, F16 or BF16")));
        }
        Ok(Self { specs: specs(cfg), dtype, seed, pad })
    }

    /// The header: every tensor's dtype, shape and byte range.
    pub fn header(&self) -> Result<Vec<u8>> {
        let mut map = serde_json::Map::new();
        map.insert(
            "__metadata__".into(),
            serde_json::json!({"format": "pt", "generator": "slc synth", "seed": self.seed.to_string()}),
        );
        let mut at = 0u64;
        if self.pad > 0 {
            // two dimensions, each addressable by a 32-bit build (a wasm32 reader refuses a larger one)
            let cols = 1u64 << self.pad.trailing_zeros().min(20);
            if self.pad / cols > u32::MAX as u64 {
                return Err(Error::Policy(format!("--pad-bytes {}: use a multiple of 4096", self.pad)));
            }
            map.insert(
                PAD_TENSOR.into(),
                serde_json::json!({"dtype": "U8", "shape": [self.pad / cols, cols], "data_offsets": [0, self.pad]}),
            );
            at = self.pad;
        }
        let size = (self.dtype.bitsize() / 8) as u64;
        for s in &self.specs {
            let info = TensorInfo {
                dtype: self.dtype,
                shape: s.shape.clone(),
                start: at,
                end: at + s.shape.iter().product::<usize>() as u64 * size,
            };
            map.insert(
                s.name.clone(),
                serde_json::json!({"dtype": format!("{:?}", info.dtype), "shape": info.shape, "data_offsets": [info.start, info.end]}),
            );
            at = info.end;
        }
        let mut header = serde_json::to_vec(&map)?;
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        Ok(header)
    }

    /// Bytes of weights after the buffer.
    pub fn weight_bytes(&self) -> u64 {
        let size = (self.dtype.bitsize() / 8) as u64;
        self.specs.iter().map(|s| s.shape.iter().product::<usize>() as u64 * size).sum()
    }

    pub fn pad(&self) -> u64 {
        self.pad
    }

    /// The tensors' bytes in file order (after the buffer), one tensor at a time; `each` gets the name and bytes.
    pub fn tensors(&self, each: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        for (i, s) in self.specs.iter().enumerate() {
            let v = values(s, self.seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64))?;
            each(&s.name, &encode(&v, self.dtype))?;
        }
        Ok(())
    }

    /// Write the whole file to `path`; the buffer is a hole (a sparse file where the file system allows).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let name = path.display().to_string();
        let io = |e: std::io::Error| Error::file(&name, format!("cannot be written ({e})"));
        let mut f = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path).map_err(io)?);
        let header = self.header()?;
        f.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        f.write_all(&header).map_err(io)?;
        if self.pad > 0 {
            let pad = i64::try_from(self.pad).map_err(|_| Error::Policy(format!("buffer of {} bytes", self.pad)))?;
            f.seek(SeekFrom::Current(pad)).map_err(io)?;
        }
        self.tensors(&mut |_, b| f.write_all(b).map_err(io))?;
        let file = f.into_inner().map_err(|e| io(e.into_error()))?;
        // a hole at the end would not extend the file; there is none (weights follow the buffer), but be exact
        file.set_len(8 + header.len() as u64 + self.pad + self.weight_bytes()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::{Checkpoint, MemSource, SafetensorsFile};

    fn tiny() -> GptNeoConfig {
        GptNeoConfig::from_json(
            r#"{"model_type":"gpt_neo","vocab_size":96,"hidden_size":32,"num_layers":2,"num_heads":4,
               "max_position_embeddings":16,"window_size":8,"attention_types":[[["global","local"],1]]}"#,
        )
        .unwrap()
    }

    fn bytes(s: &Synth) -> Vec<u8> {
        let h = s.header().unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.resize(out.len() + s.pad() as usize, 0);
        s.tensors(&mut |_, b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_synthetic_checkpoint_reads_back_with_decaying_spectra() {
        let cfg = tiny();
        for (dtype, pad) in [(Dtype::F32, 0), (Dtype::F16, 24), (Dtype::BF16, 0)] {
            let s = Synth::new(&cfg, dtype, 7, pad).unwrap();
            let b = bytes(&s);
            let ck =
                Checkpoint::new(vec![SafetensorsFile::open(Box::new(MemSource::new("m", b.clone()))).unwrap()], None)
                    .unwrap();
            assert_eq!(ck.names().count(), 2 + 2 * 13 + 2 + usize::from(pad > 0));
            let w = ck.read("transformer.h.1.mlp.c_fc.weight").unwrap();
            assert_eq!((w.dtype, w.shape.clone()), (dtype, vec![128, 32]));
            let v = w.to_f32_vec().unwrap();
            let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            assert!((rms - SIGMA).abs() < 0.002, "{dtype:?}: rms {rms}");
            // same seed, same file
            assert_eq!(b, bytes(&Synth::new(&cfg, dtype, 7, pad).unwrap()));
        }
        assert_ne!(
            bytes(&Synth::new(&cfg, Dtype::F32, 7, 0).unwrap()),
            bytes(&Synth::new(&cfg, Dtype::F32, 8, 0).unwrap())
        );
        assert!(Synth::new(&cfg, Dtype::I8, 7, 0).is_err());
    }
}
