// The policy form: presets (named with the loaded model's ranks), the policy, the quality target and the evaluation
// settings read from it, the core's preview of what the setting stores, and the link that carries the form.
import { $, app, fmtBytes } from './page.js';
import { ask } from './jobs.js';

// The origin's rank 128 was 1/16 of GPT-Neo-1.3B's hidden size: the same ratio on any model.
export const originRank = (h) => Math.max(1, Math.round(h / 16));

// The share of linear parameters the origin's fix keeps: attention at the origin's rank (U, S and Vh: r·(m+n+1)
// each), the MLP dense.
export function fixFraction({ hidden_size: h, intermediate_size: f }) {
  const r = originRank(h);
  return (4 * r * (2 * h + 1) + 2 * h * f) / (4 * h * h + 2 * h * f);
}

// The presets that name a rank say which one on the model loaded.
export function labelPresets() {
  const h = app.model.summary.hidden_size;
  const r = originRank(h);
  const label = {
    'origin-all': `The origin's setting: rank ${r} (= hidden ${h} / 16, as 128 of 2048) on every linear layer, per-tensor INT8`,
    'origin-mlp': `The origin's fix: rank ${r} with the MLP dense, per-tensor INT8`,
    'aware-same': `Activation-aware at the fix's size: its ${(100 * fixFraction(app.model.summary)).toFixed(1)}% of linear parameters spread over every layer, calibrated`,
  };
  for (const o of $('preset').options) if (label[o.value]) o.textContent = label[o.value];
}

export function applyPreset(name) {
  const h = app.model ? app.model.summary.hidden_size : 256;
  const set = (o) => {
    $('method').value = o.method || 'svd';
    // (before the worker has sent the core's defaults, the field keeps the page's own)
    $('rank').value = String(o.rank ?? (app.defaults ? app.defaults.rank : $('rank').value));
    $('quant').value = o.quant || 'per-row';
    $('min-dim').value = o.minDim ?? 0;
    $('skip').value = o.skip ?? '';
    $('rank-for').value = o.rankFor ?? '';
    $('energy').value = o.energy ?? '';
    $('budget').value = o.budget ?? '';
    $('budget-mode').value = o.budgetMode || 'energy';
    $('budget-unit').value = o.budgetUnit || 'params';
    $('refine-steps').value = o.refineSteps ?? 0;
    $('bits').value = String(o.bits ?? 4);
    $('group').value = o.group ?? 64;
    $('guard').checked = o.guard ?? true;
    $('target-metric').value = '';
    $('target-value').value = '';
  };
  const presets = {
    default: { method: 'gptq', bits: 4, group: 64 },
    'origin-all': { rank: originRank(h), quant: 'per-tensor', guard: false },
    'origin-mlp': { rank: originRank(h), quant: 'per-tensor', guard: false, skip: 'mlp.c_fc, mlp.c_proj' },
    'aware-same': { method: 'whitened', budget: app.model ? +fixFraction(app.model.summary).toFixed(4) : 0.7, budgetMode: 'energy' },
    int8: { method: 'int8' },
    int4: { method: 'quant', bits: 4, group: 64 },
    whitened: { method: 'whitened', rank: 32 },
    refit: { method: 'refit', budget: 0.2, budgetMode: 'proportional' },
    budget: { budget: 0.5, budgetMode: 'energy' },
  };
  if (presets[name]) set(presets[name]);
  updatePreview();
}

export function policyFromForm() {
  const num = (id) => ($(id).value.trim() === '' ? null : Number($(id).value));
  const quant = $('quant').value;
  const rankFor = $('rank-for').value.split(',').map((s) => s.trim()).filter(Boolean).map((s) => {
    const i = s.lastIndexOf('=');
    if (i < 1) throw new Error(`rank rule "${s}" is not PATTERN=RANK`);
    const rank = Number(s.slice(i + 1));
    if (!Number.isInteger(rank) || rank < 1) throw new Error(`rank rule "${s}": the rank must be a whole number ≥ 1`);
    return { pattern: s.slice(0, i).trim(), rank };
  });
  return {
    method: $('method').value,
    rank: num('rank') ?? app.defaults.rank,
    rank_for: rankFor,
    skip: $('skip').value.split(',').map((s) => s.trim()).filter(Boolean),
    min_dim_for_compression: num('min-dim') ?? 0,
    quant_bits: quant === 'none' ? 32 : quant === 'int4' ? 4 : 8,
    quant: quant === 'none' || quant === 'int4' ? 'per-row' : quant,
    energy: num('energy'),
    budget: num('budget'),
    budget_mode: $('budget-mode').value,
    budget_unit: $('budget-unit').value,
    break_even_guard: $('guard').checked,
    allocation_check: $('allocation-check').checked,
    refine_steps: refineSteps(),
    bits: Number($('bits').value),
    group: num('group') ?? 64,
    calibration_tokens: num('calibration-tokens') ?? app.defaults.calibration_tokens,
    calibration_window: Number($('eval-window').value) || 512,
  };
}

// The refit's block-level refinement: a whole number of steps, 0 for none.
function refineSteps() {
  const v = $('refine-steps').value.trim();
  const n = v === '' ? 0 : Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`refinement steps "${v}": a whole number ≥ 0`);
  return n;
}

// Asked of the worker (the core plans it) whenever the form changes; drawn in room kept for it.
let previewTimer = 0;

export function updatePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(async () => {
    if (!app.opened) return;
    const sizes = $('preview-sizes'), ranks = $('preview-ranks');
    let policy;
    try { policy = policyFromForm(); } catch (err) { sizes.textContent = err.message; ranks.textContent = ''; return; }
    let p;
    try { p = await ask({ cmd: 'preview', policy }); } catch (err) { if (!err.lost) { sizes.textContent = `This setting is refused: ${err.message}`; ranks.textContent = ''; } return; }
    if (!p) return;
    app.linearBytes = p.linear_bytes_before;
    app.linearBits = 8 * p.linear_bytes_before / Math.max(1, p.linear_params_before);
    $('preview').dataset.linearAfter = p.linear_bytes_after ?? '';
    $('preview').dataset.totalAfter = p.total_bytes_after ?? '';
    const less = (a, b) => `${(100 * (1 - b / a)).toFixed(1)}% smaller`;
    const n = p.matrices.length;
    sizes.replaceChildren();
    if (p.linear_bytes_after !== null && p.linear_bytes_after !== undefined) {
      sizes.append('Stores: linear layers ', strong(`${fmtBytes(p.linear_bytes_before)} → ${fmtBytes(p.linear_bytes_after)}`),
        ` (${less(p.linear_bytes_before, p.linear_bytes_after)}, ${(8 * p.linear_bytes_after / p.linear_params_before).toFixed(2)} bits per parameter); other tensors ${fmtBytes(p.bytes_untouched)} as stored; all tensors `,
        strong(`${fmtBytes(p.total_bytes_before)} → ${fmtBytes(p.total_bytes_after)}`), ` (${less(p.total_bytes_before, p.total_bytes_after)}). ${p.layers_compressed} of ${n} matrices compressed.`);
    } else {
      sizes.append(`Linear layers ${fmtBytes(p.linear_bytes_before)}, other tensors ${fmtBytes(p.bytes_untouched)} as stored: ${p.decided_when_run}.`);
    }
    ranks.textContent = describeRanks(p.matrices);
  }, 120);
}

const strong = (text) => Object.assign(document.createElement('span'), { className: 'to', textContent: text });

// ranks by matrix kind: "q_proj 256×256 rank 16 (×8) · c_fc 1024×256 dense …"
function describeRanks(mats) {
  const groups = new Map();
  for (const m of mats) {
    const kind = `${m.name.replace(/\.weight$/, '').split('.').pop()} ${m.shape[0]}×${m.shape[1]}`;
    if (!groups.has(kind)) groups.set(kind, []);
    groups.get(kind).push(m);
  }
  const parts = [];
  for (const [kind, list] of groups) {
    const by = new Map();
    for (const m of list) {
      const d = m.decision === 'low-rank' ? `rank ${m.rank}` : m.decision === 'from-spectrum' ? 'rank from its spectrum' : m.decision === 'int8' ? 'INT8'
        : m.decision === 'quantized' ? 'group-wise codes' : 'dense';
      by.set(d, (by.get(d) || 0) + 1);
    }
    parts.push(`${kind}: ${[...by].map(([d, k]) => `${d}${list.length > 1 ? ` ×${k}` : ''}`).join(', ')}`);
  }
  return parts.join(' · ');
}

// The quality target, or undefined when the form asks for none.
export function targetFromForm() {
  const metric = $('target-metric').value;
  if (!metric) return undefined;
  const value = Number($('target-value').value);
  if ($('target-value').value.trim() === '' || !Number.isFinite(value)) {
    throw new Error(`the quality target needs a value (${metric === 'cosine' ? 'a cosine in (0, 1]' : 'a perplexity ratio ≥ 1'})`);
  }
  return { target: { [metric]: value }, tolerance: Number($('target-tolerance').value) || 0.02 };
}

// ?workers=N caps the workers an evaluation uses (the benchmark compares 1 with the default)
const WORKERS = Number(new URLSearchParams(location.search).get('workers')) || undefined;

export function evalSpec() {
  const text = $('eval-text').value.trim();
  const skip = Number($('eval-skip').value) || 0;
  return { tokens: Number($('eval-tokens').value) || 2048, window: Number($('eval-window').value) || 512, workers: WORKERS, ...(text ? { text } : {}), ...(skip > 0 ? { skip } : {}) };
}

export function describePolicy(p) {
  if (p.method === 'int8') return 'INT8 only';
  if (p.method === 'auto') {
    const size = p.budget_unit === 'bits' ? `${p.budget} bits per parameter` : `${p.budget} of the bytes`;
    return `each matrix its own storage within ${size} (factors, GPTQ codes in groups of ${p.group}, or dense; calibrated)`;
  }
  if (p.method === 'quant' || p.method === 'gptq') {
    const skip = p.skip && p.skip.length ? `, skip ${p.skip.join(' ')}` : '';
    return `INT${p.bits} in groups of ${p.group}${p.method === 'gptq' ? ' by GPTQ (calibrated)' : ', round-to-nearest'}${skip}`;
  }
  const aware = { whitened: 'activation-aware, ', refit: 'activation-aware + refit, ' }[p.method] || '';
  p = { rank_for: [], skip: [], ...p };
  const parts = [p.budget ? `budget ${p.budget}${p.budget_unit === 'bits' ? ' bits per parameter' : ''} (${p.budget_mode})` : p.energy ? `energy ${p.energy}` : `rank ${p.rank}`];
  if (p.rank_for.length) parts.push(p.rank_for.map((r) => `${r.pattern}=${r.rank}`).join(' '));
  if (p.skip.length) parts.push(`skip ${p.skip.join(' ')}`);
  parts.push(p.quant_bits === 8 ? p.quant : p.quant_bits === 4 ? `INT4 factors in groups of ${p.group}` : 'f32 factors');
  if (p.refine_steps > 0) parts.push(`refined ${p.refine_steps} steps per block`);
  return aware + parts.join(', ');
}

export function samplingParams() {
  const num = (id) => Number($(id).value);
  return { max_new_tokens: num('max-new-tokens'), temperature: num('temperature'), top_k: num('top-k'),
    top_p: num('top-p'), seed: num('seed'), stop_at_eos: $('stop-at-eos').checked };
}

// The form's fields, by id: what a link (the URL's hash) and the report carry.
const FIELDS = ['preset', 'method', 'rank', 'quant', 'bits', 'group', 'min-dim', 'skip', 'rank-for', 'energy', 'budget', 'budget-unit', 'budget-mode',
  'guard', 'allocation-check', 'refine-steps', 'calibration-tokens', 'eval-tokens', 'eval-window', 'eval-skip', 'target-metric', 'target-value', 'target-tolerance',
  'prompt', 'max-new-tokens', 'temperature', 'top-k', 'top-p', 'seed', 'stop-at-eos'];

export function formFields() {
  return Object.fromEntries(FIELDS.map((id) => [id, $(id).type === 'checkbox' ? ($(id).checked ? '1' : '0') : $(id).value]));
}

export function setFormFields(values) {
  for (const id of FIELDS) {
    if (!(id in values)) continue;
    if ($(id).type === 'checkbox') $(id).checked = values[id] === '1';
    else $(id).value = values[id];
  }
}

// The setting as the URL's hash (the demo model named, so a bookmark reopens it): written at every compression.
export function settingLink() {
  const params = new URLSearchParams(formFields());
  if (app.source && app.source.demo) params.set('model', 'demo');
  return `${location.origin}${location.pathname}${location.search}#${params}`;
}

export function saveSettingInUrl() {
  history.replaceState(null, '', settingLink());
}
