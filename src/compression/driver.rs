//! Compressing a whole checkpoint in one call (what the command line and the tests do): calibration, the loss
//! allocation's probes, the refit block by block, and the factoring, shared among threads when the policy allows.
//! The page runs the same steps one at a time through the session.

#[cfg(not(target_arch = "wasm32"))]
use crate::compression::matrix::Factored;
use crate::compression::matrix::StepInfo;
use crate::compression::pipeline::{Compressed, Compressor};
use crate::compression::policy::{Method, Policy};
use crate::compression::sensitivity::Probe;
use crate::compression::source::{considered_matrices, reader};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::GptNeo;
use crate::{Error, Result};

/// Compress a whole checkpoint at once, calling `progress` after every step. The whitened method needs
/// `calibration`: the original model and the calibration text's tokens.
pub fn compress_checkpoint(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    policy: Policy,
    calibration: Option<(&GptNeo, &[u32])>,
    progress: &mut dyn FnMut(&StepInfo),
) -> Result<Compressed> {
    compress_checkpoint_with(cfg, ckpt, policy, calibration, None, progress)
}

/// Threads that share a compression's matrices: how many, and how each opens its own reader of the same files
/// (native only: a wasm instance has one thread, and the page shares matrices among workers instead).
pub struct Threads<'a> {
    pub count: usize,
    pub open: &'a (dyn Fn() -> Result<Checkpoint> + Sync),
}

/// [`compress_checkpoint`], with the factoring shared among `threads` when the policy allows it
/// ([`Compressor::can_split`]): each thread takes whole matrices from a queue and reads them through its own
/// checkpoint; the results are accepted in whatever order they finish and reported in matrix order.
pub fn compress_checkpoint_with(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    policy: Policy,
    calibration: Option<(&GptNeo, &[u32])>,
    threads: Option<Threads>,
    progress: &mut dyn FnMut(&StepInfo),
) -> Result<Compressed> {
    let mut c = Compressor::new(policy, considered_matrices(cfg, ckpt)?)?;
    let needs_model = c.needs_calibration() || c.needs_probe() || c.policy.method == Method::Refit;
    let calibration = match calibration {
        Some(x) => Some(x),
        None if needs_model => {
            return Err(Error::Policy("activation-aware SVD needs calibration text and the original model".into()))
        }
        None => None,
    };
    if let (true, Some((model, ids))) = (c.needs_calibration(), calibration) {
        let mut cal = c.calibrator(ids)?;
        while cal.step(model)? {}
        c.set_calibration(cal.finish());
    }
    if let (true, Some((model, ids))) = (c.needs_probe(), calibration) {
        let p = &c.policy;
        let tokens = p.sensitivity_tokens.min(p.calibration_tokens);
        c.set_probe(Probe::new(model, ids, tokens, p.calibration_window)?);
    }
    if let (Method::Refit, Some((model, ids))) = (c.policy.method, calibration) {
        // the spectrum pass (and probes) first, the allocation check's if any, then the blocks one by one
        c.analyse(&reader(ckpt), progress)?;
        while let Some(info) = c.check_step(&reader(ckpt))? {
            progress(&info);
        }
        crate::compression::refit::refit_all(&mut c, model, ids, progress)?;
    }
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(t) = threads.filter(|t| t.count > 1 && c.can_split()) {
        factor_on_threads(&mut c, &t, progress)?;
        return c.finish(cfg, ckpt);
    }
    #[cfg(target_arch = "wasm32")]
    let _ = threads;
    let read = reader(ckpt);
    while let Some(info) = c.step(&read)? {
        progress(&info);
    }
    c.finish(cfg, ckpt)
}

#[cfg(not(target_arch = "wasm32"))]
fn factor_on_threads(c: &mut Compressor, t: &Threads, progress: &mut dyn FnMut(&StepInfo)) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = c.mats.len();
    let jobs = (0..n).map(|i| c.job(i)).collect::<Result<Vec<_>>>()?;
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Result<Factored>>();
    std::thread::scope(|scope| {
        for _ in 0..t.count.min(n) {
            let (tx, jobs, next) = (tx.clone(), &jobs, &next);
            scope.spawn(move || {
                let ckpt = match (t.open)() {
                    Ok(c) => c,
                    Err(e) => return tx.send(Err(e)).unwrap_or(()),
                };
                let read = reader(&ckpt);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || tx.send(jobs[i].clone().run(&read)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for _ in 0..n {
            let done = rx.recv().map_err(|_| Error::msg("a compression thread stopped without its result"));
            let f = match done.and_then(|r| r) {
                Ok(f) => f,
                Err(e) => {
                    // stop handing out matrices; the threads finish the one they hold
                    next.store(n, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let (i, name) = (f.index, f.report.name.clone());
            c.accept(f)?;
            progress(&StepInfo { phase: "factor", done: c.accepted(), total: n, name, index: Some(i) });
        }
        Ok(())
    })
}
