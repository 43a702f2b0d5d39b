//! What the session's steps return: small, serializable results (the wasm edge hands them to the page as they are).

use crate::compression::matrix::{CompressionTotals, LayerReport, StepInfo};
use crate::compression::policy::MatrixInfo;
use crate::evaluation::metrics::EvalReport;
use crate::model::bundle::{BundleSummary, ModelBundle};
use crate::model::gpt_neo::GptNeo;
use serde::{Deserialize, Serialize};

/// What opening files found.
#[derive(Serialize)]
pub struct OpenReport {
    pub summary: BundleSummary,
    pub missing: Vec<String>,
    pub ignored: Vec<String>,
    /// An original checkpoint, or a compressed one this program exported.
    pub kind: OpenedKind,
    /// For a compressed checkpoint: whether the loaded original is the model it was made from.
    pub matches_original: bool,
    /// Layer reports carried by a compressed checkpoint.
    pub layers: Option<serde_json::Value>,
    pub policy: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpenedKind {
    Original,
    Compressed,
}

/// The original model once loaded.
#[derive(Serialize)]
pub struct Loaded {
    pub bytes: usize,
    /// 16-bit weights (kept as stored, or converted to f16) because f32 would not fit.
    pub keep_half: bool,
    /// How the linear layers are held: f32, as-stored (f16/bf16 kept), f16 (f32 converted).
    pub precision: crate::model::weights::Precision,
    pub resident_bytes: usize,
    pub tensor_bytes: u64,
    /// Left in its file for the GPU to read, a tensor at a time (a GPU is in use and f32 would not fit here).
    pub on_gpu_only: bool,
}

/// A compression just started.
#[derive(Serialize)]
pub struct CompressBegin<'a> {
    pub total_steps: usize,
    pub matrices: &'a [MatrixInfo],
    pub calibration_tokens: Option<usize>,
    /// Whether the matrices can be shared among workers (no spectrum pass, no calibration).
    pub can_split: bool,
    /// The matrices still to factor (by index): those the compression before had not factored the same way.
    pub todo: Vec<usize>,
}

/// Work of a compression that other workers can do now: its phase ("spectrum", "check", "factor") and the matrices
/// left in it, by index.
#[derive(Serialize)]
pub struct Shareable {
    pub phase: &'static str,
    pub todo: Vec<usize>,
}

/// One step of a compression; `layer` is the matrix's report when one was just factored.
#[derive(Serialize)]
pub struct CompressStep<'a> {
    #[serde(flatten)]
    pub info: StepInfo,
    pub layer: Option<&'a LayerReport>,
}

/// A compression finished.
#[derive(Serialize)]
pub struct Finished {
    pub totals: CompressionTotals,
    pub bytes_original: u64,
    /// Bytes of the tensors compression does not touch (embeddings, norms, biases, a tied head), as stored in both:
    /// `bytes_original` less the linear layers' `totals.bytes_considered`.
    pub bytes_untouched: u64,
    pub tensor_bytes: u64,
    pub file_bytes: u64,
    pub resident_bytes: usize,
    pub layers_total: usize,
    pub layers_compressed: usize,
    /// What the allocation check found, when it ran.
    pub allocation_check: Option<crate::compression::pipeline::AllocationCheck>,
}

/// An evaluation just started: its steps in this instance and in all parts, and what a step is.
#[derive(Serialize)]
pub struct EvalBegin {
    pub steps: usize,
    pub all_steps: usize,
    /// "window", or "stage" when the original is streamed from its file.
    pub unit: &'static str,
    pub text_tokens: usize,
}

#[derive(Serialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// An evaluation's figures with the sizes and layer counts: the page's summary and `slc eval --json`.
#[derive(Clone, Debug, Serialize)]
pub struct EvalSummary {
    #[serde(flatten)]
    pub eval: EvalReport,
    pub streamed: bool,
    pub bytes_original: u64,
    pub bytes_compressed: Option<u64>,
    pub resident_bytes_original: Option<usize>,
    pub resident_bytes_compressed: Option<usize>,
    pub layers_compressed: Option<usize>,
    pub layers_total: usize,
}

/// A compressed model as the summary counts it: the model, its checkpoint's tensor bytes, the heap it holds.
pub struct CompressedSizes<'a> {
    pub model: &'a GptNeo,
    pub tensor_bytes: u64,
    pub resident_bytes: usize,
}

impl EvalSummary {
    /// The one place the summary is assembled (the page's, and `slc eval --json`'s).
    pub fn new(
        eval: EvalReport,
        streamed: bool,
        original: &ModelBundle,
        original_model: Option<&GptNeo>,
        compressed: Option<CompressedSizes>,
    ) -> Self {
        EvalSummary {
            eval,
            streamed,
            bytes_original: original.tensor_bytes(),
            bytes_compressed: compressed.as_ref().map(|c| c.tensor_bytes),
            resident_bytes_original: original_model.map(|o| o.weight_bytes()),
            resident_bytes_compressed: compressed.as_ref().map(|c| c.resident_bytes),
            layers_compressed: compressed.as_ref().map(|c| c.model.compressed_layers()),
            // every block's six linear layers and the head
            layers_total: 6 * original.cfg.num_layers + 1,
        }
    }
}

/// One generated token.
#[derive(Serialize)]
pub struct GenStep {
    pub id: u32,
    /// The text it adds (complete characters only).
    pub text: String,
    /// The token itself, for display.
    pub token: String,
    pub done: bool,
}

/// Heap bytes in use (measured) and the size of the heap.
#[derive(Serialize)]
pub struct Memory {
    pub live_bytes: usize,
    pub wasm_memory_bytes: f64,
}

/// A sweep the page asks for ([`crate::session::Session::sweep`]): `recipes` (`METHOD-MODE` or `int8`) × `budgets` on
/// `text`, calibrated on its first `base.calibration_tokens` tokens and measured on the `eval_tokens` after them.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct SweepSpec {
    pub text: String,
    pub recipes: Vec<String>,
    pub budgets: Vec<f64>,
    #[serde(default)]
    pub base: crate::compression::policy::Policy,
    pub eval_tokens: usize,
}

/// A quality target for [`crate::session::Session::target_begin`]: `{"target": {"cosine": 0.95}, "tolerance": 0.02}`
/// or `{"target": {"ppl-ratio": 1.5}}`.
#[derive(Clone, Debug, Deserialize)]
pub struct TargetSpec {
    pub target: crate::explore::Target,
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_tolerance() -> f64 {
    0.02
}

/// Where a target search stands: the budget to compress at next (none when it is over), the split of the
/// calibration text to measure it on, the smallest budget that met the target so far (1 when none did), whether the
/// point just recorded met it, and every point so far.
#[derive(Serialize)]
pub struct TargetState<'a> {
    pub next_budget: Option<f64>,
    pub split: crate::explore::Split,
    pub best: f64,
    pub met: Option<bool>,
    pub path: &'a [crate::explore::Point],
    /// Whether each point of `path` met the target.
    pub path_met: &'a [bool],
}

impl<'a> TargetState<'a> {
    pub fn of(s: &'a crate::explore::TargetSearch, split: crate::explore::Split, met: Option<bool>) -> Self {
        TargetState { next_budget: s.next_budget(), split, best: s.best(), met, path: &s.path, path_met: &s.met }
    }
}
