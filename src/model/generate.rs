//! Text generation: greedy decoding, or sampling with temperature, top-k, top-p and a seed, with a KV cache.
//! Stops at the end-of-sequence token, at a token limit, or at the model's last position.

use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::{GptNeo, KvCache};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// How to pick the next token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = no limit).
    pub top_p: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Stop at the end-of-sequence token.
    pub stop_at_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, max_new_tokens: 30, stop_at_eos: true }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Policy(format!("temperature {} must be a number ≥ 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Policy(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and the same on every platform, so a seed gives the same text natively and in wasm.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Approximately standard normal, fast (no transcendental functions): the Irwin–Hall sum of four 16-bit uniforms,
    /// centred and scaled to unit variance. For random test matrices and synthetic weights, not for sampling.
    pub fn approx_normal(&mut self) -> f32 {
        let u = self.next_u64();
        let s = (u & 0xffff) + ((u >> 16) & 0xffff) + ((u >> 32) & 0xffff) + (u >> 48);
        (s as f32 / 65536.0 - 2.0) * 3f32.sqrt()
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Index of the largest value; the first on ties; NaN never wins.
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &x) in xs.iter().enumerate() {
        if x > bv {
            bv = x;
            best = i;
        }
    }
    best
}

/// Picks tokens from logits.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Self { params, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 {
            return argmax(logits) as u32;
        }
        let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
        if idx.is_empty() {
            return 0;
        }
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.truncate(p.top_k);
        }
        let t = p.temperature;
        let m = logits[idx[0]] as f64;
        let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - m) / t).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (k, &x) in probs.iter().enumerate() {
                acc += x;
                if acc >= p.top_p {
                    keep = k + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        let u = self.rng.next_f64();
        let mut acc = 0.0;
        for (k, &x) in probs.iter().enumerate() {
            acc += x;
            if u < acc {
                return idx[k] as u32;
            }
        }
        idx[probs.len() - 1] as u32
    }
}

/// A generation in progress, advanced one token at a time (so a page can stream it and stop it).
#[derive(Clone, Debug)]
pub struct Generation {
    cache: KvCache,
    pending: Vec<u32>,
    /// Positions run so far, and how many the model reads.
    positions: usize,
    max_positions: usize,
    sampler: Sampler,
    max_new: usize,
    eos: Option<u32>,
    /// Tokens produced so far.
    pub tokens: Vec<u32>,
    pub done: bool,
}

impl Generation {
    /// Start from `prompt` (an empty prompt starts from the BOS token).
    pub fn new(model: &GptNeo, prompt: &[u32], params: SamplingParams) -> Result<Self> {
        Self::for_config(&model.cfg, prompt, params)
    }

    /// [`Generation::new`] for a model of config `cfg`, wherever it runs (the GPU's steps go through
    /// [`Generation::pending`] and [`Generation::accept`]).
    pub fn for_config(cfg: &GptNeoConfig, prompt: &[u32], params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let pending = if prompt.is_empty() {
            vec![cfg
                .bos_token_id
                .or(cfg.eos_token_id)
                .ok_or_else(|| Error::msg("the prompt is empty and config.json names no bos_token_id to start from"))?]
        } else {
            prompt.to_vec()
        };
        if pending.len() >= cfg.max_position_embeddings {
            return Err(Error::msg(format!(
                "the prompt has {} tokens; the model reads at most {}",
                pending.len(),
                cfg.max_position_embeddings
            )));
        }
        let eos = if params.stop_at_eos { cfg.eos_token_id } else { None };
        Ok(Self {
            cache: KvCache::new(cfg.num_layers),
            pending,
            positions: 0,
            max_positions: cfg.max_position_embeddings,
            max_new: params.max_new_tokens,
            sampler: Sampler::new(params),
            eos,
            tokens: Vec::new(),
            done: false,
        })
    }

    /// Heap bytes a generation of `new_tokens` after a prompt of `prompt_tokens` takes at its peak, beside the
    /// model's weights: the KV cache at full length, counted twice (a step appends by copying), the prompt's pass
    /// (its activations, each head's score matrix, and a weight block expanded for the product, twice over for the
    /// temporaries around them) and the logits with the sampler's copies of them. An estimate that errs high, so
    /// that what it lets through fits.
    pub fn memory_bytes(cfg: &crate::model::config::GptNeoConfig, prompt_tokens: usize, new_tokens: usize) -> f64 {
        let (h, l, heads) = (cfg.hidden_size as f64, cfg.num_layers as f64, cfg.num_heads as f64);
        let p = prompt_tokens.max(1) as f64;
        let t = (prompt_tokens + new_tokens).min(cfg.max_position_embeddings) as f64;
        let cache = 2.0 * l * t * h * 4.0 * 2.0;
        let activations = p * (4.0 * h + cfg.intermediate_size() as f64) * 4.0 * 2.0;
        let scores = heads * p * p * 4.0 * 2.0;
        let block = crate::model::linear::SCRATCH_ELEMS as f64 * 4.0 * 2.0;
        let logits = cfg.vocab_size as f64 * (4.0 + 4.0 + 8.0);
        cache + activations + scores + block + logits
    }

    /// Produce the next token, or `None` when finished.
    pub fn step(&mut self, model: &GptNeo) -> Result<Option<u32>> {
        if self.pending().is_none() {
            return Ok(None);
        }
        let ids = Tensor::from_slice(&self.pending, (1, self.pending.len()), &Device::Cpu)?;
        let logits: Vec<f32> = model.forward_last(&ids, Some(&mut self.cache))?.squeeze(0)?.to_vec1()?;
        Ok(Some(self.accept(&logits)))
    }

    /// The ids the next step runs after the positions already run (the prompt, then each new token), or `None`
    /// when the generation is finished.
    pub fn pending(&mut self) -> Option<&[u32]> {
        if self.done || self.tokens.len() >= self.max_new || self.positions + self.pending.len() > self.max_positions {
            self.done = true;
            return None;
        }
        Some(&self.pending)
    }

    /// Tokens it may still produce.
    pub fn remaining(&self) -> usize {
        self.max_new.saturating_sub(self.tokens.len())
    }

    /// Positions run so far.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// The next token, from the logits of the last position of [`Generation::pending`]'s ids.
    pub fn accept(&mut self, logits: &[f32]) -> u32 {
        let next = self.sampler.sample(logits);
        self.positions += self.pending.len();
        self.tokens.push(next);
        self.pending = vec![next];
        if Some(next) == self.eos || self.tokens.len() >= self.max_new {
            self.done = true;
        }
        next
    }
}

/// Generate all at once.
pub fn generate(model: &GptNeo, prompt: &[u32], params: SamplingParams) -> Result<Vec<u32>> {
    let mut g = Generation::new(model, prompt, params)?;
    while g.step(model)?.is_some() {}
    Ok(g.tokens)
}

/// Greedy decoding without a cache: the whole sequence is run again for every token (a reference for tests).
pub fn greedy_no_cache(model: &GptNeo, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let logits = model.logits(&seq)?;
        let last: Vec<f32> = logits.get(seq.len() - 1)?.to_vec1()?;
        seq.push(argmax(&last) as u32);
    }
    Ok(seq[prompt.len()..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_respects_top_k_and_seed() {
        let logits = vec![1.0f32, 3.0, 2.0, 0.5, f32::NAN];
        let params = SamplingParams { temperature: 1.0, top_k: 2, seed: 7, ..Default::default() };
        let mut a = Sampler::new(params.clone());
        let mut b = Sampler::new(params);
        for _ in 0..200 {
            let x = a.sample(&logits);
            assert!(x == 1 || x == 2);
            assert_eq!(x, b.sample(&logits));
        }
        let mut greedy = Sampler::new(SamplingParams::default());
        assert_eq!(greedy.sample(&logits), 1);
        let mut nucleus = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.5, seed: 1, ..Default::default() });
        for _ in 0..50 {
            assert_eq!(nucleus.sample(&logits), 1);
        }
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 5.0, 5.0, f32::NAN]), 1);
    }
}
