// How long a job will take on this machine, from what the session has measured so far: the worker's speed measured
// once on small products (Rust session::speed), then corrected by every job it has timed since (a compression of a
// kind, an evaluation, a generation). The estimates count work the way the core does it: a forward pass's
// operations per token, an SVD's m·n·k, the allocation check's extra candidate and probes, the original evaluated
// once per span (its head alone after that), a compression's shareable phases split among the helpers.

import { calibrated, recipePolicy } from './protocol.js';

/** @typedef {{f32_flops: number, svd_units: number, spectrum_units: number}} Speed */

/** What has been measured: the worker's speed, and measured / estimated for each kind of job timed so far. */
const measured = {
  /** @type {?Speed} */ speed: null,
  /** @type {Object<string, number>} */ correction: {},
  /** decode: seconds per byte of weights read per token, from the generations timed so far */
  decodeSecondsPerByte: 0,
  /** spans whose original has been evaluated (its head alone runs after that) */
  spans: new Set(),
};

const cores = () => Math.max(1, navigator.hardwareConcurrency || 1);
// the workers that share a compression's shareable phases and an evaluation's windows
const compressWorkers = () => Math.min(4, cores());
const evalWorkers = () => Math.max(1, Math.min(4, cores()));

export function setSpeed(speed) {
  measured.speed = speed;
}

export const hasSpeed = () => !!measured.speed;

/** Keep what a job of `kind` took against what was estimated for it. */
export function learn(kind, estimated, seconds) {
  if (estimated > 0 && seconds > 0) measured.correction[kind] = seconds / (estimated / (measured.correction[kind] || 1));
}

const corrected = (kind, seconds) => seconds * (measured.correction[kind] || 1);

/** The linear layers of a model as matrices: [{name, m, n}] (q, k, v, out, fc, proj per layer). */
function matrices(s) {
  const h = s.hidden_size, f = s.intermediate_size, out = [];
  for (let l = 0; l < s.num_layers; l++) {
    for (const k of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) out.push({ name: `h.${l}.attn.attention.${k}`, m: h, n: h });
    out.push({ name: `h.${l}.mlp.c_fc`, m: f, n: h }, { name: `h.${l}.mlp.c_proj`, m: h, n: f });
  }
  return out;
}

/** The rank `policy` gives a matrix, roughly when a budget decides it at run time (its share of the budget). */
function rankOf(policy, mat) {
  const k = Math.min(mat.m, mat.n);
  if (policy.skip && policy.skip.some((p) => p && mat.name.includes(p.replace(/^transformer\./, '').replace(/\.weight$/, '')))) return null;
  if (policy.method === 'int8') return 'int8';
  if (policy.method === 'quant' || policy.method === 'gptq') return 'quant';
  if (policy.budget) return Math.max(1, Math.min(k, Math.floor(paramsFraction(policy) * mat.m * mat.n / (mat.m + mat.n + 1))));
  if (policy.energy) return Math.max(1, Math.round(k * policy.energy * 0.5));
  const rule = (policy.rank_for || []).find((r) => mat.name.includes(r.pattern));
  return Math.min(k, rule ? rule.rank : policy.rank);
}

/** The fraction of the linear parameters a budget keeps, roughly: a budget in bits per parameter over the bits a factor
 * value takes (INT8 with its scales, INT4 in groups with theirs, f32). */
function paramsFraction(policy) {
  if (policy.budget_unit !== 'bits') return policy.budget;
  const per = policy.quant_bits === 8 ? 8 : policy.quant_bits === 4 ? 4 + 16 / (policy.group || 64) : 32;
  return Math.min(1, policy.budget / per);
}

/** Operations per token of a model's linear layers and head under `policy` (null: the original). */
function flopsPerToken(s, policy) {
  let f = 2 * s.vocab_size * s.hidden_size;
  for (const mat of matrices(s)) {
    const r = policy ? rankOf(policy, mat) : null;
    f += 2 * (typeof r === 'number' ? r * (mat.m + mat.n) : mat.m * mat.n);
  }
  return f;
}

/** Seconds to evaluate `tokens` tokens in windows of `window`: the compressed model, and the original (its head alone
 * when it has run on this span before). */
export function evaluation(s, policy, { tokens, window, skip = 0 }) {
  const sp = measured.speed;
  if (!sp) return 0;
  const attention = 4 * s.hidden_size * s.num_layers * Math.min(window, s.max_position_embeddings) / 2;
  const original = measured.spans.has(`${skip}:${tokens}:${window}`)
    ? 2 * s.vocab_size * s.hidden_size
    : flopsPerToken(s, null) + attention;
  const flops = tokens * (original + flopsPerToken(s, policy) + attention);
  return corrected('evaluate', flops / (sp.f32_flops * evalWorkers() * 0.7));
}

/** The span an evaluation ran on: its original is kept. */
export function evaluated({ tokens, window, skip = 0 }) {
  measured.spans.add(`${skip}:${tokens}:${window}`);
}

/** Bytes of weights a model reads per generated token under `policy` (null: the original, as held). */
function bytesPerToken(s, policy, original) {
  let b = s.vocab_size * s.hidden_size * 4;
  for (const mat of matrices(s)) {
    const r = policy ? rankOf(policy, mat) : null;
    b += typeof r === 'number' ? r * (mat.m + mat.n) * (policy.quant_bits === 8 ? 1 : policy.quant_bits === 4 ? (4 + 16 / policy.group) / 8 : 4)
      : r === 'int8' ? mat.m * mat.n : r === 'quant' ? mat.m * mat.n * (policy.bits + 16 / policy.group) / 8
      : mat.m * mat.n * (original && original.precision !== 'f32' ? 2 : 4);
  }
  return b;
}

/** Seconds to generate `n` tokens with the original (policy null) or a compressed model. */
export function generation(s, policy, n, original) {
  const perByte = measured.decodeSecondsPerByte || (measured.speed ? 8 / measured.speed.f32_flops : 0);
  return n * bytesPerToken(s, policy, original) * perByte;
}

/** Keep a generation's measured rate (tokens/s of the model `policy` made, null for the original). */
export function learnGeneration(s, policy, tokensPerSecond, original) {
  if (tokensPerSecond > 0) measured.decodeSecondsPerByte = 1 / (tokensPerSecond * bytesPerToken(s, policy, original));
}

/** Seconds to compress with `policy` (the compression kind's correction applied once one has been timed); `known`:
 * what an earlier compression computed that this one takes (the weights' spectra, the calibration's statistics).
 * @param {any} s @param {any} policy @param {{known?: {spectra?: boolean, calibration?: boolean}}} [o] */
export function compression(s, policy, { known = {} } = {}) {
  const sp = measured.speed;
  if (!sp) return 0;
  const aware = calibrated(policy.method);
  const workers = Math.min(2, compressWorkers());
  let seconds = 0;
  // calibration: the original over the calibration tokens (unless the compression before collected the same
  // statistics, which the worker keeps for it); the allocation check's probes: three passes over the sensitivity
  // tokens
  if (aware && !known.calibration) seconds += policy.calibration_tokens * flopsPerToken(s, null) / sp.f32_flops;
  const checks = aware && policy.budget && policy.allocation_check !== false && policy.budget_mode !== 'proportional';
  if (checks) seconds += 3 * Math.min(policy.sensitivity_tokens || 1024, policy.calibration_tokens) * flopsPerToken(s, null) / sp.f32_flops;
  for (const mat of matrices(s)) {
    const r = rankOf(policy, mat);
    const k = Math.min(mat.m, mat.n);
    const units = mat.m * mat.n * k;
    if (r === null) continue;
    if (r === 'int8' || (r === 'quant' && policy.method === 'quant')) { seconds += 20 * mat.m * mat.n / sp.f32_flops / workers; continue; }
    // GPTQ: the inverse Hessian (two Cholesky factorisations and an inverse, n³ in all) and the column updates (m·n²)
    const gptq = (mat.n * mat.n * mat.n + mat.m * mat.n * mat.n) / sp.f32_flops / workers;
    if (r === 'quant') { seconds += gptq; continue; }
    // method auto: GPTQ's codes at every width beside the whitened decomposition, each measured
    if (policy.method === 'auto') seconds += 4 * gptq;
    // the spectrum pass of a budget (or energy) allocation, unless an earlier compression computed it
    if ((policy.budget || policy.energy) && !known.spectra) seconds += units / sp.spectrum_units / workers;
    if (aware) {
      // the whitened decomposition (W·G or W·L, its smaller side's square and that side's eigendecomposition, in
      // f64), the activation error of each candidate
      const wg = mat.m * mat.n * mat.n;
      seconds += (k * k * k + (wg + units + r * mat.n * mat.n) / 4) / sp.svd_units * (checks ? 1.3 : 1) / workers;
    } else if (k <= 512 || 4 * r >= k) {
      seconds += units / sp.svd_units / workers;
    } else {
      const l = Math.min(k, r + 80);
      seconds += 1.75 * 2 * mat.m * mat.n * l / sp.f32_flops / workers;
    }
  }
  if (policy.method === 'refit') seconds *= 1.5 + 0.5 * (policy.refine_steps || 0);
  return corrected(kindOf(policy), seconds);
}

/** Seconds for a sweep: every recipe at every budget (a size the shapes fix once), each compressed and measured on `tokens` tokens,
 * shared among the helpers. @param {any} s @param {{recipes: string[], budgets: number[], base: any, evalTokens: number}} spec */
export function sweep(s, spec) {
  let seconds = 0;
  for (const recipe of spec.recipes) {
    const { fixed, ...r } = recipePolicy(recipe);
    for (const budget of fixed ? [null] : spec.budgets) {
      const policy = { ...spec.base, ...r, budget };
      seconds += compression(s, policy) + evaluation(s, policy, { tokens: spec.evalTokens, window: spec.base.calibration_window, skip: -1 });
    }
  }
  return seconds / Math.min(2, compressWorkers());
}

/** Seconds for a sensitivity table: each block matrix compressed alone and the model run from its block on over the
 * sensitivity tokens, shared among the helpers. @param {any} s @param {any} policy */
export function sensitivity(s, policy) {
  const sp = measured.speed;
  if (!sp) return 0;
  const mats = matrices(s).length;
  const factor = compression(s, { ...policy, budget: policy.probe, allocation_check: false }) / mats;
  const probe = 0.5 * policy.sensitivity_tokens * flopsPerToken(s, null) / sp.f32_flops;
  return mats * (factor + probe) / Math.min(2, compressWorkers());
}

/** The kind of compression a correction is kept for. */
export const kindOf = (policy) => `compress:${policy.method}:${policy.budget ? policy.budget_mode : policy.energy ? 'energy' : 'rank'}`;

/** Seconds as people say them. */
export const say = (s) => (s >= 90 ? `${Math.round(s / 60)} min` : `${Math.max(1, Math.round(s))} s`);
