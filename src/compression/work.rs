//! A compression's work that another worker can do with its own reader of the same files, as bytes both ways: a
//! matrix's spectrum (its singular values), its factors, or the allocation check's two candidates for it. The
//! coordinating worker hands these out while its helpers are idle and keeps what comes back; each result is the
//! same to the bit as if the coordinator had done the work (the job carries everything it depends on: the plan, the
//! policy, the spectrum, the calibration statistics).

use crate::compression::format::{decode_factored, encode_factored};
use crate::compression::matrix::{FactorJob, Factored};
use crate::compression::policy::{MatrixInfo, Plan};
use crate::compression::svd;
use crate::model::checkpoint::{Checkpoint, MemSource, SafetensorsFile};
use crate::{Error, Result};
use safetensors::Dtype;
use std::collections::BTreeMap;

/// A unit of shareable work.
pub enum Work {
    /// Matrix `index`'s singular values.
    Spectrum { index: usize, matrix: MatrixInfo },
    /// A matrix factored as planned.
    Factor(FactorJob),
    /// A matrix factored under its plan and under the allocation check's other plan.
    Check(FactorJob, Plan),
}

/// What a unit of work gives back.
pub enum Done {
    Spectrum { index: usize, values: Vec<f64> },
    Factored(Box<Factored>),
    Checked(Box<(Factored, Factored)>),
}

impl Work {
    /// Do it; `read(name)` returns a weight as f32, row-major.
    pub fn run(self, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Done> {
        Ok(match self {
            Work::Spectrum { index, matrix: m } => {
                let w = read(&m.name)?;
                let values =
                    svd::singular_values(&w, m.out, m.inp).map_err(|e| Error::tensor(&m.name, e.to_string()))?;
                Done::Spectrum { index, values }
            }
            Work::Factor(job) => Done::Factored(Box::new(job.run(read)?)),
            Work::Check(job, alt) => {
                let (a, b) = job.run_with(read, Some(alt))?;
                let b = b.ok_or_else(|| Error::msg("the allocation check's other candidate is missing"))?;
                Done::Checked(Box::new((a, b)))
            }
        })
    }
}

const NAME: &str = "work from another worker";

/// A small safetensors file: `metadata`, and f64 vectors by name.
fn pack(metadata: BTreeMap<String, String>, vectors: &[(&str, &[f64])]) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<u8>, usize)> = vectors
        .iter()
        .map(|(n, v)| (n.to_string(), v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(), v.len()))
        .collect();
    let views = data
        .iter()
        .map(|(n, b, len)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(Dtype::F64, vec![*len], b)
                    .map_err(|e| Error::msg(e.to_string()))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata.into_iter().collect())).map_err(|e| Error::msg(e.to_string()))
}

/// What [`pack`] wrote: its metadata and a reader of its vectors.
fn unpack(bytes: Vec<u8>) -> Result<Checkpoint> {
    Checkpoint::new(vec![SafetensorsFile::open(Box::new(MemSource::new(NAME, bytes)))?], None)
}

fn meta(ckpt: &Checkpoint, key: &str) -> Result<String> {
    ckpt.metadata().and_then(|m| m.get(key)).cloned().ok_or_else(|| Error::file(NAME, format!("has no {key}")))
}

fn vector(ckpt: &Checkpoint, name: &str) -> Result<Option<Vec<f64>>> {
    if !ckpt.contains(name) {
        return Ok(None);
    }
    let raw = ckpt.read(name)?;
    match raw.dtype {
        Dtype::F64 => {
            Ok(Some(raw.data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()))
        }
        _ => Err(Error::tensor(name, "is not f64")),
    }
}

/// `work` as bytes for another worker ([`decode_work`]).
pub fn encode_work(work: &Work) -> Result<Vec<u8>> {
    let mut m = BTreeMap::new();
    match work {
        Work::Spectrum { index, matrix } => {
            m.insert("kind".into(), "spectrum".into());
            m.insert("index".into(), index.to_string());
            m.insert("matrix".into(), serde_json::to_string(matrix)?);
            pack(m, &[])
        }
        Work::Factor(job) | Work::Check(job, _) => {
            m.insert("kind".into(), if matches!(work, Work::Check(..)) { "check" } else { "factor" }.into());
            m.insert("job".into(), serde_json::to_string(&job.describe())?);
            if let Work::Check(_, alt) = work {
                m.insert("alt".into(), serde_json::to_string(alt)?);
            }
            let mut vectors: Vec<(&str, &[f64])> = Vec::new();
            if let Some(s) = job.spectrum() {
                vectors.push(("spectrum", s));
            }
            if let Some(g) = job.gram() {
                vectors.push(("gram", g));
            }
            pack(m, &vectors)
        }
    }
}

/// The work [`encode_work`] wrote.
pub fn decode_work(bytes: Vec<u8>) -> Result<Work> {
    let c = unpack(bytes)?;
    match meta(&c, "kind")?.as_str() {
        "spectrum" => Ok(Work::Spectrum {
            index: meta(&c, "index")?.parse().map_err(|_| Error::file(NAME, "has a bad index"))?,
            matrix: serde_json::from_str(&meta(&c, "matrix")?)?,
        }),
        kind @ ("factor" | "check") => {
            let job = FactorJob::from_description(
                serde_json::from_str(&meta(&c, "job")?)?,
                vector(&c, "spectrum")?,
                vector(&c, "gram")?,
            );
            if kind == "check" {
                Ok(Work::Check(job, serde_json::from_str(&meta(&c, "alt")?)?))
            } else {
                Ok(Work::Factor(job))
            }
        }
        other => Err(Error::file(NAME, format!("is work of an unknown kind \"{other}\""))),
    }
}

/// `done` as bytes for the worker that handed out the work ([`decode_done`]).
pub fn encode_done(done: &Done) -> Result<Vec<u8>> {
    let mut m = BTreeMap::new();
    match done {
        Done::Spectrum { index, values } => {
            m.insert("kind".into(), "spectrum".into());
            m.insert("index".into(), index.to_string());
            join(pack(m, &[("values", values)])?, &[])
        }
        Done::Factored(f) => {
            m.insert("kind".into(), "factored".into());
            pack(m, &[]).and_then(|head| join(head, &[encode_factored(f)?]))
        }
        Done::Checked(pair) => {
            let (a, b) = pair.as_ref();
            m.insert("kind".into(), "checked".into());
            pack(m, &[]).and_then(|head| join(head, &[encode_factored(a)?, encode_factored(b)?]))
        }
    }
}

/// A head and parts, each prefixed with its length.
fn join(head: Vec<u8>, parts: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for p in std::iter::once(&head).chain(parts) {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    Ok(out)
}

fn split(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let len = bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
        let end = len.and_then(|l| (at + 8).checked_add(l)).filter(|&e| e <= bytes.len());
        let Some(end) = end else { return Err(Error::file(NAME, "is cut short")) };
        out.push(bytes[at + 8..end].to_vec());
        at = end;
    }
    Ok(out)
}

/// What [`encode_done`] wrote.
pub fn decode_done(bytes: Vec<u8>) -> Result<Done> {
    // a head (what kind, a spectrum's values) and the factored matrices
    let mut parts = split(&bytes)?.into_iter();
    let head = unpack(parts.next().ok_or_else(|| Error::file(NAME, "is empty"))?)?;
    let mut next = || parts.next().ok_or_else(|| Error::file(NAME, "is cut short")).and_then(decode_factored);
    match meta(&head, "kind")?.as_str() {
        "spectrum" => Ok(Done::Spectrum {
            index: meta(&head, "index")?.parse().map_err(|_| Error::file(NAME, "has a bad index"))?,
            values: vector(&head, "values")?.ok_or_else(|| Error::file(NAME, "has no values"))?,
        }),
        "factored" => Ok(Done::Factored(Box::new(next()?))),
        "checked" => Ok(Done::Checked(Box::new((next()?, next()?)))),
        other => Err(Error::file(NAME, format!("is a result of an unknown kind \"{other}\""))),
    }
}
