// The messages between the page (jobs.js sends them for every feature), the coordinating worker (coordinator.js) and
// its helpers (helper.js, more worker instances the coordinator starts: team.js), documented once. Every side imports
// this module, and the type check (www/tsconfig*.json) holds what each side posts to these typedefs.
//
// Page → worker: a Command. Worker → page: Events, ending each job with exactly one of "result", "cancelled" or
// "error", which carries the command's `id` (the page numbers its commands; two jobs may overlap, e.g. a plot's
// spectrum and a user's command, and each answer settles its own request). A helper speaks the same protocol with
// the coordinator (the h_* commands).

/**
 * @typedef {{tokens: number, window: number, workers?: number, text?: string, skip?: number}} EvalSettings
 *   What the page asks to evaluate: the text's first `tokens` tokens (after `skip`) in windows of `window`; `text`
 *   absent means the built-in evaluation text; `workers` caps the workers used.
 * @typedef {{text: string, skip: number, tokens: number, window: number, part: number, parts: number}} EvalSpec
 *   What the wasm Workspace evaluates (Rust: session::EvalSpec): this instance takes part `part` of `parts`.
 * @typedef {{max_new_tokens: number, temperature: number, top_k: number, top_p: number, seed: number,
 *   stop_at_eos: boolean}} SamplingParams  (Rust: model::generate::SamplingParams)
 *
 * @typedef {{cmd: 'open', files?: File[], demo?: boolean, evalSpec?: EvalSettings}} OpenCommand
 *   Result: the Rust OpenReport, plus `loaded` (or `load_error`), `layers_reports`, `evaluation`/`eval_error`.
 * @typedef {{target: ({cosine: number}|{'ppl-ratio': number}), tolerance?: number}} TargetSpec
 *   A quality target (Rust: session::TargetSpec): the smallest budget whose compression meets it on the calibration
 *   tokens, bisected to `tolerance` (default 0.02).
 * @typedef {{next_budget: ?number, split: {skip: number, tokens: number, window: number}, best: number,
 *   met: ?boolean, path: object[], path_met: boolean[]}} TargetState   Where a search stands (Rust:
 *   session::TargetState); `path` holds explore::Point objects, one per compression tried, `path_met` whether each
 *   met the target.
 * @typedef {{cmd: 'compress', policy: object, evalSpec?: EvalSettings, target?: TargetSpec}} CompressCommand
 *   `policy` is a Rust compression::policy::Policy as JSON. With `target`, the worker compresses at each budget the
 *   search asks for, evaluates it on the calibration tokens, and keeps the smallest that met the target (streaming
 *   "target" events). Result: {finished, evaluation, eval_error, compress_seconds, workers: {count, heaps}, memory,
 *   target: TargetState|null, layers}; `heaps` is each worker's wasm memory in bytes (this worker, then each helper
 *   at its largest); `layers` is every matrix's Rust LayerReport.
 * @typedef {{cmd: 'evaluate', evalSpec: EvalSettings}} EvaluateCommand   Result: the Rust EvalSummary + seconds, workers and
 *   `device` (where it ran: "GPU: name (backend)" or "CPU: wasm SIMD, N workers").
 * @typedef {{cmd: 'generate', prompt: string, params: SamplingParams, which: ('original'|'compressed')[]}} GenerateCommand
 *   Streams "token" events. Result: {[which]: {tokens, tokens_per_s}, device}.
 * @typedef {{cmd: 'export', name: string}} ExportCommand   Result: {blob, name}.
 * @typedef {{cmd: 'spectrum', name: string}} SpectrumCommand   Result: {name, values}.
 * @typedef {{cmd: 'memory_limit', bytes: number}} MemoryLimitCommand   Result: true.
 * @typedef {{cmd: 'preview', policy: object}} PreviewCommand   A quick question, not a job: answered at once (between
 *   the steps of a running job too), with no state or progress events and no effect on the job. Result: the Rust
 *   compression::preview::Preview (every matrix's decision, rank and bytes; linear and total bytes), or null when no
 *   model is open.
 * @typedef {{cmd: 'sweep', recipes: string[], budgets: number[], base: object, evalTokens: number,
 *   evalSpec?: EvalSettings}} SweepCommand   Every recipe ("svd-energy", "whitened-loss", "int8", "gptq4-g64", …) at
 *   every budget (those whose size the shapes fix once: `recipePolicy`), each compressed from the original and measured on `evalTokens` tokens after `base`'s calibration
 *   tokens; shared among helpers; streams "point" events. Result: {points, seconds, workers, helpers_replaced}.
 * @typedef {{cmd: 'sensitivity', policy: object, evalSpec?: EvalSettings}} SensitivityCommand   Every block matrix
 *   compressed alone with `policy`, measured on its first `sensitivity_tokens`; parts shared among helpers; streams
 *   "row" events. Result: {rows, seconds, workers, helpers_replaced}; a row is a Rust explore::SensitivityRow.
 * @typedef {{cmd: 'speed'}} SpeedCommand   A quick question like a preview: the worker's speed measured on small
 *   products (Rust session::speed::Speed), what the page's estimates of a job's time start from.
 * @typedef {{cmd: 'cancel'}} CancelCommand   Ends the running job with a "cancelled" event.
 * @typedef {{cmd: 'restore', files?: File[], demo?: boolean, checkpoint?: File, memoryLimit?: number}} RestoreCommand
 *   A new worker takes over from one that died: open and load the original again and, when there was one, the
 *   compressed checkpoint (no evaluation). Result: {original: OpenReport, compressed: OpenReport|null}.
 * @typedef {{cmd: 'test_fault', kind: 'trap'|'hang', helper?: boolean}} TestFaultCommand   For the end-to-end tests:
 *   the worker (or its helpers) traps or stops answering at the next step of its job.
 * @typedef {{cmd: 'h_models', original: File[], compressed: File, reuse?: boolean}} HelperModelsCommand
 *   Coordinator → helper: hold the same two models; with `reuse`, the helper already holds this original loaded
 *   (and the states its evaluations kept) and opens the compressed model alone. Result: true.
 * @typedef {{cmd: 'h_eval'} & EvalSpec} HelperEvalCommand
 *   Coordinator → helper: evaluate one part. Result: the part's sums (Rust evaluation::metrics::PartialSums).
 * @typedef {{cmd: 'h_open', original: File[], reuse?: boolean}} HelperOpenCommand
 *   Coordinator → helper: hold the original's files open (nothing loaded), to read the weights a compression's work
 *   needs; with `reuse`, the original it holds already. Result: true.
 * @typedef {{cmd: 'h_work', bytes: Uint8Array}} HelperWorkCommand   Coordinator → helper: one unit of a compression's
 *   work (Rust compression::work: a spectrum, a matrix's factors, the allocation check's two candidates), as bytes
 *   (transferred). Result: {bytes, heap}: what it made, for the coordinator's Workspace.compress_accept, and the
 *   helper's wasm memory.
 * @typedef {{cmd: 'h_original', original: File[]}} HelperOriginalCommand   Coordinator → helper: open and load the
 *   original alone (its compressed model dropped). Result: true.
 * @typedef {{cmd: 'h_point', index: number, spec: object}} HelperPointCommand   Coordinator → helper: one sweep point
 *   (Rust session::SweepSpec with one recipe and one budget). Result: the Rust explore::Point.
 * @typedef {{cmd: 'h_sensitivity', policy: object, text: string, part: number, parts: number}} HelperSensitivityCommand
 *   Coordinator → helper: every `parts`-th block matrix from the `part`-th; each row rides on a "progress" event
 *   (task 'sensitivity', `row`). Result: true.
 *  * @typedef {OpenCommand|CompressCommand|EvaluateCommand|GenerateCommand|ExportCommand|SpectrumCommand|
 *   MemoryLimitCommand|PreviewCommand|SpeedCommand|SweepCommand|SensitivityCommand|CancelCommand|RestoreCommand|TestFaultCommand|
 *   HelperModelsCommand|HelperEvalCommand|HelperOpenCommand|HelperWorkCommand|HelperOriginalCommand|
 *   HelperPointCommand|HelperSensitivityCommand} Command
 *
 * @typedef {{type: 'defaults', policy: object}} DefaultsEvent   Once, at start: the core's default Policy.
 * @typedef {{type: 'state', state: string, message: string}} StateEvent
 * @typedef {{type: 'progress', task: string, done: number, total: number, label?: string, row?: object}} ProgressEvent
 *   A helper's sensitivity rows ride on its progress events (`row`).
 * @typedef {{type: 'plan', total_steps: number, matrices: object[], calibration_tokens?: number, can_split: boolean,
 *   todo: number[]}} PlanEvent   `todo`: the matrices still to factor (the others the compression before made the
 *   same way, taken as they are)
 * @typedef {{type: 'layer', layer: object}} LayerEvent   A matrix's LayerReport, as soon as it is compressed.
 * @typedef {{type: 'target', search: TargetState}} TargetEvent   Before each compression of a target search, and at
 *   its end.
 * @typedef {{type: 'token', which: 'original'|'compressed', id: number, text: string, token: string, n: number,
 *   tokens_per_s: number}} TokenEvent
 * @typedef {{type: 'point', index: number, point: object}} PointEvent   A sweep's point `index` (an explore::Point).
 * @typedef {{type: 'row', row: object}} RowEvent   A sensitivity table's row (an explore::SensitivityRow).
 * @typedef {{type: 'device', label: string, gpu: boolean, why: string}} DeviceEvent   Where evaluations and generations
 *   run ("GPU: name (backend)" or "CPU: wasm SIMD, …"), and why not on the GPU; at start and when the GPU fails.
 * @typedef {{type: 'result', cmd: string, id?: number, result: any}} ResultEvent
 * @typedef {{type: 'cancelled', cmd: string, id?: number}} CancelledEvent
 * @typedef {{type: 'error', cmd: string, id?: number, kind: ErrorKind, message: string, fatal?: boolean, heap?: number,
 *   doing?: string}} ErrorEvent   `fatal`: the worker is lost (see isFatal) and must be replaced; `heap` is the wasm
 *   memory it held, `doing` what it was doing.
 * @typedef {{type: 'alive', heap: number, doing: string}} AliveEvent   Every HEARTBEAT_MS from every worker.
 * @typedef {DefaultsEvent|StateEvent|ProgressEvent|PlanEvent|LayerEvent|TargetEvent|TokenEvent|PointEvent|RowEvent|DeviceEvent|ResultEvent|CancelledEvent|ErrorEvent|
 *   AliveEvent} Event
 *
 * @typedef {'file'|'tensor'|'config'|'tokenizer'|'setting'|'memory'|'check-memory'|'numeric'|'gpu'|'other'} ErrorKind
 *   From the Rust error's variant (error::ErrorKind); code branches on it, never on the message's words.
 *   'check-memory': not enough memory for the allocation check, without which the compression can run.
 */

/** The kinds an error can have. @type {readonly ErrorKind[]} */
export const ERROR_KINDS = Object.freeze(['file', 'tensor', 'config', 'tokenizer', 'setting', 'memory', 'check-memory', 'numeric', 'gpu', 'other']);

/** An "error" event for `err` (a wasm error carries its kind; anything else is "other"). @returns {ErrorEvent} */
export function errorEvent(cmd, err) {
  const kind = err && ERROR_KINDS.includes(err.kind) ? err.kind : 'other';
  return { type: 'error', cmd, kind, message: err && err.message ? err.message : String(err) };
}

/** The Error an "error" event stands for, its kind kept. @param {ErrorEvent} m */
export function errorFrom(m) {
  return Object.assign(new Error(m.message), { kind: m.kind || 'other' });
}

/** Whether a method reads calibration text (the Rust side's `Method::is_activation_aware`). @param {string} method */
export const calibrated = (method) => ['whitened', 'refit', 'gptq', 'auto'].includes(method);

/** What a sweep's recipe sets of a policy (Rust: explore::Recipe): `METHOD-MODE` a factorization at each budget;
 * `int8`, `quantB-gG` and `gptqB-gG` (group-wise codes of B bits in groups of G) a size the shapes fix, measured
 * once (`fixed`); `auto` / `auto-gG` each matrix's storage chosen at each budget (in bits or bytes).
 * @param {string} recipe */
export function recipePolicy(recipe) {
  if (recipe === 'int8') return { method: 'int8', budget_mode: 'proportional', fixed: true };
  const g = /^(quant|gptq)(\d+)-g(\d+)$/.exec(recipe);
  if (g) return { method: g[1], budget_mode: 'proportional', bits: Number(g[2]), group: Number(g[3]), fixed: true };
  const a = /^auto(?:-g(\d+))?$/.exec(recipe);
  if (a) return { method: 'auto', budget_mode: 'loss', group: Number(a[1] || 64), fixed: false };
  const [method, budget_mode] = recipe.split('-');
  return { method, budget_mode, fixed: false };
}

/** How often every worker posts its heartbeat ({type: 'alive', heap, doing}), in ms. */
export const HEARTBEAT_MS = 1000;

/**
 * Whether an error means the wasm instance that threw it is lost: a trap (`RuntimeError`: an allocation that failed,
 * a panic) or memory that could not grow (`RangeError`). The worker that meets one reports it with `fatal: true` and
 * takes no more commands; whoever started it replaces it. (A helper's death reaches its coordinator as an error
 * with `helperDied`, which is not fatal to the coordinator.)
 */
export const isFatal = (err) => !!err && !err.helperDied && (err instanceof WebAssembly.RuntimeError || err instanceof RangeError);

/** Whether an error says that something did not fit in memory. */
export const isMemoryError = (err) => !!err && (err.kind === 'memory' || err.kind === 'check-memory');
