//! `slc compress`: a checkpoint compressed by a policy (or to a quality target) and written with its report.

use super::io::{cores, write_file};
use super::progress::Progress;
use semantic_llm_compressor::compression::driver::{compress_checkpoint_with, Threads};
use semantic_llm_compressor::compression::format::Export;
use semantic_llm_compressor::compression::matrix::totals;
use semantic_llm_compressor::compression::policy::{BudgetMode, BudgetUnit, Method, Policy, RankRule};
use semantic_llm_compressor::compression::svd::SvdMethod;
use semantic_llm_compressor::explore;
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::storage::QuantScheme;
use semantic_llm_compressor::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub(super) struct CompressArgs {
    #[arg(long = "input-dir", alias = "input_dir")]
    input_dir: PathBuf,
    #[arg(long = "output-dir", alias = "output_dir")]
    output_dir: PathBuf,
    /// Rank kept for every matrix no --rank-for names.
    #[arg(long, default_value_t = 128)]
    rank: usize,
    /// 8: INT8 factors (--quant's scheme); 4: group-wise INT4 factors (a scale per --group values of a row);
    /// 32: f32 factors.
    #[arg(long = "quant-bits", alias = "quant_bits", default_value_t = 8)]
    quant_bits: u8,
    /// Matrices whose smaller side is below this stay dense.
    #[arg(long = "min-dim-for-compression", alias = "min_dim_for_compression", default_value_t = 0)]
    min_dim_for_compression: usize,
    /// Keep dense every matrix whose name contains PATTERN (repeatable).
    #[arg(long)]
    skip: Vec<String>,
    /// PATTERN=RANK: rank for the matrices whose name contains PATTERN (repeatable; first match wins).
    #[arg(long = "rank-for", alias = "rank_for")]
    rank_for: Vec<String>,
    /// INT8 scheme: per-row (symmetric, a scale per row) or per-tensor (the origin's asymmetric scheme).
    #[arg(long, value_enum, default_value_t = QuantScheme::PerRow)]
    quant: QuantScheme,
    /// svd (low rank), whitened (activation-aware SVD from --calibration-text), refit, int8 (dense INT8, no SVD),
    /// quant (dense group-wise codes of --bits bits, round-to-nearest), gptq (the same codes by GPTQ on
    /// --calibration-text) or auto (each matrix's storage — activation-aware factors at a rank, GPTQ codes of 2, 3, 4
    /// or 8 bits in groups of --group, or dense — chosen within --budget-bits by its measured damage per byte).
    #[arg(long, value_enum, default_value_t = Method::Svd)]
    method: Method,
    /// Methods quant and gptq: bits a code takes (2, 3, 4 or 8).
    #[arg(long, default_value_t = 4)]
    bits: u8,
    /// Methods quant and gptq, and INT4 factors (--quant-bits 4): values of a row sharing one f16 scale (8 to 4096).
    #[arg(long, default_value_t = 64)]
    group: usize,
    /// Method quant: choose the codes by GPTQ on --calibration-text (the same as --method gptq).
    #[arg(long)]
    gptq: bool,
    /// Smallest rank keeping this fraction of each matrix's squared Frobenius norm.
    #[arg(long)]
    energy: Option<f64>,
    /// Keep this fraction of the considered matrices' parameters (or bytes, --budget-unit bytes; or, --budget-unit
    /// bits, store this many bits per linear parameter).
    #[arg(long)]
    budget: Option<f64>,
    #[arg(long = "budget-unit", alias = "budget_unit", value_enum, default_value_t = BudgetUnit::Params)]
    budget_unit: BudgetUnit,
    /// Store at most this many bits per linear parameter (codes, scales, factors): --budget B --budget-unit bits.
    #[arg(long = "budget-bits", conflicts_with_all = ["budget", "budget_unit"])]
    budget_bits: Option<f64>,
    /// energy (global, by normalised singular-value energy), uniform (one rank), proportional (the same fraction
    /// each) or loss; with activation-aware factors checked against proportional (see --no-allocation-check).
    #[arg(long = "budget-mode", alias = "budget_mode", value_enum, default_value_t = BudgetMode::Energy)]
    budget_mode: BudgetMode,
    /// auto, exact or randomized.
    #[arg(long, value_enum, default_value_t = SvdMethod::Auto)]
    svd: SvdMethod,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compress even where the factors would not be smaller than the dense weight.
    #[arg(long = "no-break-even-guard")]
    no_break_even_guard: bool,
    /// Method whitened with --budget-mode energy, uniform or loss: keep the mode's ranks even where the same fraction
    /// of each matrix measures closer to the original on the calibration text (by default both are factored and
    /// the closer kept).
    #[arg(long = "no-allocation-check")]
    no_allocation_check: bool,
    /// Method whitened: the calibration text (its first --calibration-tokens tokens are read).
    #[arg(long = "calibration-text", alias = "calibration_text")]
    calibration_text: Option<PathBuf>,
    #[arg(long = "calibration-tokens", alias = "calibration_tokens", default_value_t = 2048)]
    calibration_tokens: usize,
    #[arg(long = "calibration-window", alias = "calibration_window", default_value_t = 512)]
    calibration_window: usize,
    /// Method whitened: damping λ = DAMP · mean diagonal of each layer's input Gram matrix.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Method refit: pull the closed-form fit toward the original weights with ρ = RIDGE · mean diagonal of the
    /// compressed path's input Gram matrix (0: plain least squares).
    #[arg(long = "refit-ridge", default_value_t = 0.3)]
    refit_ridge: f64,
    /// Method refit: fit on calibration windows starting every STRIDE tokens (overlapping; still the first
    /// --calibration-tokens), each token seen in several contexts (default: side by side).
    #[arg(long = "refit-stride")]
    refit_stride: Option<usize>,
    /// Method refit with --budget-mode loss: keep the ranks planned before the refit instead of spending the budget
    /// left again before each group, with the refitted targets' spectra.
    #[arg(long = "no-refit-replan")]
    no_refit_replan: bool,
    /// Method refit: after each block's refit, STEPS Adam steps on all its factors at once against the original
    /// block's outputs on the refit's windows (0: none).
    #[arg(long = "refine-steps", default_value_t = 0)]
    refine_steps: usize,
    /// Method refit with --refine-steps: each factor's step size, relative to its root-mean-square entry.
    #[arg(long = "refine-lr", default_value_t = 1e-3)]
    refine_lr: f64,
    /// Budget mode loss: calibration tokens (the first) on which each matrix's sensitivity is measured.
    #[arg(long = "sensitivity-tokens", default_value_t = 1024)]
    sensitivity_tokens: usize,
    /// Budget mode loss: probe each matrix alone at the rank keeping this fraction of its parameters (default: the
    /// budget).
    #[arg(long)]
    probe: Option<f64>,
    /// Instead of a size: the smallest budget whose logits cosine on the calibration text is at least T.
    #[arg(long = "target-cosine")]
    target_cosine: Option<f64>,
    /// Instead of a size: the smallest budget whose perplexity on the calibration text is at most R × the original's.
    #[arg(long = "target-ppl-ratio")]
    target_ppl_ratio: Option<f64>,
    /// Target search: stop when the budget is known to within this fraction.
    #[arg(long = "target-tolerance", default_value_t = 0.01)]
    target_tolerance: f64,
    /// Threads that factor matrices side by side, each reading its own slices of the files (default: every core;
    /// policies with a spectrum pass or calibration run on one).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

impl CompressArgs {
    fn policy(&self) -> Result<Policy> {
        let method = match (self.method, self.gptq) {
            (Method::Quant | Method::Gptq, true) => Method::Gptq,
            (m, false) => m,
            (m, true) => {
                return Err(Error::Policy(format!(
                    "--gptq chooses group-wise codes: it goes with --method quant, not {}",
                    serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
                )))
            }
        };
        Ok(Policy {
            method,
            rank: self.rank,
            rank_for: self.rank_for.iter().map(|r| RankRule::parse(r)).collect::<Result<_>>()?,
            skip: self
                .skip
                .iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            min_dim_for_compression: self.min_dim_for_compression,
            quant_bits: self.quant_bits,
            quant: self.quant,
            bits: self.bits,
            group: self.group,
            energy: self.energy,
            budget: self.budget_bits.or(self.budget),
            budget_unit: if self.budget_bits.is_some() { BudgetUnit::Bits } else { self.budget_unit },
            budget_mode: self.budget_mode,
            svd: self.svd,
            seed: self.seed,
            break_even_guard: !self.no_break_even_guard,
            allocation_check: !self.no_allocation_check,
            calibration_tokens: self.calibration_tokens,
            calibration_window: self.calibration_window,
            damp: self.damp,
            refit_ridge: self.refit_ridge,
            refit_stride: self.refit_stride,
            refit_replan: !self.no_refit_replan,
            refine_steps: self.refine_steps,
            refine_lr: self.refine_lr,
            sensitivity_tokens: self.sensitivity_tokens,
            probe: self.probe,
        })
    }
}

pub(super) fn compress(a: &CompressArgs) -> Result<()> {
    let policy = a.policy()?;
    let b = ModelBundle::open_dir(&a.input_dir)?;
    if b.is_compressed() {
        return Err(Error::file(
            a.input_dir.display().to_string(),
            "is already a compressed checkpoint; compress the original",
        ));
    }
    let t0 = std::time::Instant::now();
    // the whitened method runs the original over calibration text
    let calibration = match (policy.method.is_activation_aware(), &a.calibration_text) {
        (true, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::file(path.display().to_string(), format!("cannot be read ({e})")))?;
            Some((b.load_model(false)?, b.tokenizer()?.encode(&text)?))
        }
        (true, None) => {
            return Err(Error::Policy(format!(
                "--method {} needs --calibration-text FILE",
                serde_json::to_value(policy.method)?.as_str().unwrap_or("whitened")
            )))
        }
        _ => None,
    };
    let open = || Ok(ModelBundle::open_dir(&a.input_dir)?.ckpt);
    let target = match (a.target_cosine, a.target_ppl_ratio) {
        (Some(_), Some(_)) => return Err(Error::Policy("give --target-cosine or --target-ppl-ratio, not both".into())),
        (Some(t), None) => Some(explore::Target::Cosine(t)),
        (None, Some(r)) => Some(explore::Target::PplRatio(r)),
        (None, None) => None,
    };
    let mut path = Vec::new();
    let bar = Progress::new("step", a.json);
    let c = match (target, &calibration) {
        (Some(t), Some((model, ids))) => {
            let (c, p) =
                explore::search_target(&b.cfg, &b.ckpt, model, ids, &policy, t, a.target_tolerance, &mut |p| {
                    bar.tick(&format!(
                        "budget {:.4}: cosine {:.4}, perplexity ×{:.3}",
                        p.budget.unwrap_or(1.0),
                        p.cosine,
                        p.ppl_ratio
                    ))
                })?;
            path = p;
            c
        }
        (Some(_), None) => {
            return Err(Error::Policy(
                "a quality target is measured on calibration text: use --method whitened or refit with                  --calibration-text FILE"
                    .into(),
            ))
        }
        (None, _) => compress_checkpoint_with(
            &b.cfg,
            &b.ckpt,
            policy,
            calibration.as_ref().map(|(m, ids)| (m, ids.as_slice())),
            Some(Threads { count: a.threads.unwrap_or_else(cores), open: &open }),
            &mut |s| bar.set(s.done, s.total, &format!("{}: {}", s.phase, s.name)),
        )?,
    };
    bar.finish();
    let seconds = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.output_dir)
        .map_err(|e| Error::file(a.output_dir.display().to_string(), e.to_string()))?;
    // as read, whichever form the tokenizer came in (slow files become the tokenizer.json they stand for)
    let (config, tokenizer) = (b.config_json.clone(), b.tokenizer_json.clone());
    let export = Export::new(&b.ckpt, &config, tokenizer.as_deref(), &c.weights, &c.reports, &c.policy)?;
    let out_path = a.output_dir.join("model.safetensors");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&out_path).map_err(|e| Error::file(out_path.display().to_string(), e.to_string()))?,
    );
    export.write(&b.ckpt, &mut |bytes| Ok(file.write_all(bytes)?))?;
    file.flush()?;
    write_file(&a.output_dir.join("config.json"), config.as_bytes())?;
    if let Some(t) = &tokenizer {
        write_file(&a.output_dir.join("tokenizer.json"), t.as_bytes())?;
    }
    let t = totals(&c.reports);
    // the tensors compression does not touch (embeddings, norms, biases, a tied head), as stored in both
    let untouched = b.tensor_bytes().saturating_sub(t.bytes_considered);
    let mut report = serde_json::json!({
        "policy": c.policy, "totals": t, "layers": c.reports, "seconds": seconds,
        "file_bytes": export.file_bytes(), "tensor_bytes": export.data_bytes, "bytes_untouched": untouched,
    });
    if !path.is_empty() {
        report["target_path"] = serde_json::to_value(&path)?;
    }
    if let Some(check) = &c.allocation_check {
        report["allocation_check"] = serde_json::to_value(check)?;
    }
    write_file(&a.output_dir.join("compression_report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:>12} {:>6} {:>9} {:>9} {:>10} {:>10}  storage / reason",
        "matrix", "shape", "rank", "err svd", "err stored", "bytes", "after"
    )?;
    for r in &c.reports {
        let pct = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{:.2}%", 100.0 * e));
        writeln!(
            o,
            "{:<48} {:>12} {:>6} {:>9} {:>9} {:>10} {:>10}  {}",
            r.name,
            format!("{}x{}", r.shape[0], r.shape[1]),
            r.rank.map_or("-".into(), |x| x.to_string()),
            pct(r.err_svd),
            pct(r.err_stored),
            r.bytes_before,
            r.bytes_after,
            r.reason.as_deref().unwrap_or(&r.storage)
        )?;
    }
    writeln!(
        o,
        "compressed {}/{} layers; linear params {} -> {} ({:.3}); linear bytes {} -> {} ({:.3} bits per linear \
         parameter), other tensors {} as stored; file {} bytes; {:.1} s",
        t.layers_compressed,
        t.layers_total,
        t.params_considered,
        t.params_after,
        t.params_after as f64 / t.params_considered.max(1) as f64,
        t.bytes_considered,
        t.bytes_after,
        t.bits_per_param,
        untouched,
        export.file_bytes(),
        seconds
    )?;
    if let Some(k) = &c.allocation_check {
        writeln!(o, "{}", allocation_check_line(k))?;
    }
    for p in &path {
        writeln!(
            o,
            "target search: budget {:.4} -> cosine {:.4}, perplexity {:.2} (x{:.3}) on the calibration text{}",
            p.budget.unwrap_or(1.0),
            p.cosine,
            p.ppl,
            p.ppl_ratio,
            if p.budget == c.policy.budget { "  <- kept" } else { "" }
        )?;
    }
    writeln!(o, "wrote {}", a.output_dir.display())?;
    Ok(())
}

/// The allocation check's finding in one sentence.
pub(super) fn allocation_check_line(k: &semantic_llm_compressor::compression::pipeline::AllocationCheck) -> String {
    let (m, p) = (&k.mode_damage, &k.proportional_damage);
    format!(
        "allocation check on the first {} calibration tokens, KL(original || compressed) per position: {} {:.4} \
         (cosine {:.4}), same fraction each {:.4} (cosine {:.4}): {} kept",
        k.tokens,
        k.mode.name(),
        m.kl,
        m.cosine,
        p.kl,
        p.cosine,
        if k.kept_mode { k.mode.name() } else { "same fraction each" }
    )
}
