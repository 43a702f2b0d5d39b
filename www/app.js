// The page's main thread: it renders what the worker reports and sends it what the user asks. All model work runs
// in www/worker.js; nothing here computes more than a table row.
import * as plots from './plots.js';
import { errorFrom, HEARTBEAT_MS } from './protocol.js';
import { reportHtml } from './report.js';
import { Runs } from './runs.js';

const $ = (id) => document.getElementById(id);

const app = {
  defaults: null,       // the core's default Policy (the worker sends it first)
  model: null,          // the open report of the original model
  name: 'model',        // what to call it in file names
  opened: false,        // an original checkpoint is open (it can be compressed)
  loaded: false,        // the original model is in memory (it can run and be evaluated)
  compressed: false,    // a compressed model exists
  canExport: false,     // it was compressed here
  layers: [],           // layer reports
  plan: [],             // matrices considered
  sort: { key: null, dir: 1 },
  currentRun: null,     // the run whose compressed model the worker holds (its generations join it)
  quick: new Map(),     // request id → {resolve, reject}: quick questions (a preview) that are not jobs
  sweepPoints: [],      // the explorer's sweep, point by point
  sensRows: [],         // the explorer's sensitivity table, row by row
  gen: { original: [], compressed: [], diverged: -1 },
  pending: new Map(), // request id → {resolve, reject}: jobs may overlap (a plot's spectrum, a user's command)
  nextId: 0,
  task: null,           // {name, start}
  source: null,         // what was opened ({files} or {demo: true}): a new worker reopens it if the old one dies
  checkpoint: null,     // the last compression as a File (kept when small enough), for a new worker to take over
  story: { running: false, cancelled: false }, // the origin's story, while it is told
  beat: 0,              // when the worker last spoke, and the wasm memory it reported
  heap: 0,
};

// ---------- status, errors, progress ----------
function setState(state, text) {
  $('status').dataset.state = state;
  $('status-text').textContent = text || state;
}
function showError(message) {
  setState('error', 'error');
  $('error').hidden = false;
  $('error').textContent = message;
}
function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}
function setBusy(on) {
  $('cancel').disabled = !on;
  $('progress').classList.toggle('on', on);
  $('progress').setAttribute('aria-hidden', String(!on));
  for (const id of ['load-demo', 'files', 'folder']) $(id).disabled = on;
  $('compress').disabled = on || !app.opened;
  $('story').disabled = on || !app.loaded || app.story.running;
  $('generate').disabled = on || !(app.loaded || app.compressed);
  $('export').disabled = on || !app.canExport;
  $('report').disabled = on || !app.model;
  $('sweep').disabled = on || !app.loaded;
  $('sensitivity').disabled = on || !app.loaded;
  if (!on) app.task = null;
}
function showProgress(m) {
  if (!app.task || app.task.name !== m.task) app.task = { name: m.task, start: performance.now() };
  $('progress-bar').max = Math.max(1, m.total);
  $('progress-bar').value = m.done;
  $('progress-text').textContent = `${m.task} ${m.done}/${m.total}${m.label ? ' · ' + m.label : ''}`;
  const elapsed = (performance.now() - app.task.start) / 1000;
  const left = m.done > 0 ? elapsed / m.done * (m.total - m.done) : NaN;
  $('progress-eta').textContent = Number.isFinite(left) && m.done < m.total ? `about ${fmtSeconds(left)} left` : '';
}

// ---------- talking to the worker ----------
// The worker is replaceable: when it dies (a trap, memory that would not grow, an uncaught error, or a heartbeat
// that stopped), every job it had ends with a sentence saying so, and a new worker reopens the model and the last
// compression, so that what the page shows stays usable. ?watchdog=MS shortens the wait for a heartbeat (tests).
const WATCHDOG = Number(new URLSearchParams(location.search).get('watchdog')) || 180000;
let worker = null;
function startWorker() {
  const url = new URL('./worker.js', import.meta.url);
  if (WATCHDOG !== 180000) url.searchParams.set('watchdog', String(WATCHDOG));
  const w = new Worker(url, { type: 'module' });
  w.onmessage = (e) => { if (w === worker) onWorkerMessage(e.data); };
  w.onerror = (e) => { e.preventDefault(); if (w === worker) workerLost(`an uncaught error: ${e.message || 'unknown'}`); };
  w.onmessageerror = () => { if (w === worker) workerLost('a message from it could not be read'); };
  app.beat = performance.now();
  return w;
}
worker = startWorker();
setInterval(() => {
  const quiet = performance.now() - app.beat;
  if (app.pending.size && quiet > WATCHDOG) workerLost(`it stopped answering: no heartbeat for ${fmtSeconds(quiet / 1000)}`);
}, HEARTBEAT_MS);

function send(msg, { keepError = false } = {}) {
  if (!keepError) clearError();
  setBusy(true);
  return new Promise((resolve, reject) => {
    const id = ++app.nextId;
    app.pending.set(id, { resolve, reject, cmd: msg.cmd });
    worker.postMessage({ ...msg, id });
  });
}
// A quick question (a preview): no job, no busy state, no progress; answered between the steps of a running job.
function ask(msg) {
  return new Promise((resolve, reject) => {
    const id = ++app.nextId;
    app.quick.set(id, { resolve, reject });
    worker.postMessage({ ...msg, id });
  });
}
// #status[data-jobs] counts finished jobs, so a test can wait for the end of the job it started
function settle(m, fn) {
  const p = app.pending.get(m.id);
  app.pending.delete(m.id);
  $('status').dataset.jobs = String(Number($('status').dataset.jobs || 0) + 1);
  setBusy(app.pending.size > 0);
  if (p) fn(p);
}
function onWorkerMessage(m) {
  app.beat = performance.now();
  const quick = app.quick.get(m.id);
  if (quick && (m.type === 'result' || m.type === 'error')) {
    app.quick.delete(m.id);
    if (m.type === 'result') quick.resolve(m.result); else quick.reject(errorFrom(m));
    return;
  }
  switch (m.type) {
    case 'alive': app.heap = m.heap; break;
    case 'defaults': app.defaults = m.policy; if (app.onDefaults) { const f = app.onDefaults; app.onDefaults = null; f(); } break;
    case 'state': setState(m.state, m.message); break;
    case 'progress': showProgress(m); break;
    case 'plan': startTable(m.matrices); break;
    case 'layer': addLayer(m.layer); break;
    case 'target': renderTarget(m.search); break;
    case 'token': addToken(m); break;
    case 'point': app.sweepPoints[m.index] = m.point; drawSweep(); break;
    case 'row': app.sensRows.push(m.row); drawHeatmap(); break;
    case 'result': settle(m, (p) => p.resolve(m.result)); break;
    case 'cancelled': settle(m, (p) => p.reject(Object.assign(new Error('cancelled'), { cancelled: true }))); setState(app.loaded ? 'ready' : 'idle', 'cancelled'); break;
    case 'error':
      if (m.fatal) { app.heap = m.heap || app.heap; workerLost(m.message, true); break; }
      settle(m, (p) => p.reject(errorFrom(m)));
      showError(m.message);
      break;
  }
}
const DOING = { open: 'opening the model', restore: 'reopening the model', compress: 'compressing',
  evaluate: 'evaluating', generate: 'generating', export: 'exporting', spectrum: 'computing a spectrum',
  memory_limit: 'setting the memory limit', sweep: 'running a sweep', sensitivity: 'measuring sensitivity' };
// The worker is gone: end its jobs with what happened, start a new one, and reopen what was open.
function workerLost(why, said = false) {
  const old = worker;
  old.terminate();
  worker = startWorker();
  const jobs = [...app.pending.values()].map((p) => DOING[p.cmd] || p.cmd);
  const what = said ? why : `the worker stopped while ${jobs.join(' and ') || 'idle'} (${why}); it held ${fmtBytes(app.heap)} of memory`;
  // a worker that dies while reopening the model is not replaced by yet another reopening (the model may be what
  // kills it)
  const wasRestoring = [...app.pending.values()].some((p) => p.cmd === 'restore');
  // every job the old worker had ends, rejected (a story waiting on one stops)
  for (const id of [...app.pending.keys()]) settle({ id }, (p) => p.reject(Object.assign(new Error(what), { lost: true })));
  for (const q of app.quick.values()) q.reject(Object.assign(new Error(what), { lost: true }));
  app.quick.clear();
  setBusy(false);
  const lostCompression = app.compressed && !app.checkpoint;
  const sentence = `${what[0].toUpperCase()}${what.slice(1)}. A new worker has taken over`;
  // what the page holds when no worker has the model any more
  const forget = () => {
    Object.assign(app, { opened: false, loaded: false, compressed: false, canExport: false });
    setBusy(false);
  };
  if (!app.source || wasRestoring) {
    forget();
    showError(`${sentence}${wasRestoring ? ', after the one before it died reopening the model' : ''}; open a model to go on.`);
    return;
  }
  const keeps = app.checkpoint ? 'the model and the last compression' : 'the model';
  showError(`${sentence} and is reopening ${keeps}; the results shown are kept.${lostCompression ? ' The compressed model was too large to keep outside the worker: compress again to generate with it or export it.' : ''}`);
  const message = $('error').textContent;
  if (lostCompression) { app.compressed = false; app.canExport = false; }
  send({ cmd: 'restore', ...app.source, checkpoint: app.checkpoint, memoryLimit: MEMORY || undefined }, { keepError: true }).then((r) => {
    const alone = r.original.kind === 'compressed'; // a compressed checkpoint had been opened without its original
    app.loaded = !alone && !!r.original.loaded;
    app.precision = app.loaded ? r.original.loaded.precision : null;
    app.compressed = alone || !!r.compressed;
    app.canExport = !alone && !!r.compressed;
    setBusy(false);
    // the sentence stays on the page; the state says the page is usable again
    showError(`${message} Done: the new worker is ready.`);
    setState('ready', 'recovered');
  }, (err) => {
    if (err.lost) return;
    forget();
    showError(`${message} It could not reopen the model: ${err.message}`);
  });
}
// Send a command; `after` gets its result. A cancelled job leaves nothing half-done on the page: `onCancel` clears
// what it had streamed in.
async function run(msg, after, onCancel) {
  try {
    const result = await send(msg);
    after(result);
  } catch (err) {
    if (err.lost) return; // workerLost has said what happened
    if (!err.cancelled) showError(err.message);
    else if (onCancel) onCancel();
  }
}

// ---------- formatting ----------
const fmtBytes = (b) => b >= 1e9 ? (b / 1e9).toFixed(2) + ' GB' : b >= 1e6 ? (b / 1e6).toFixed(1) + ' MB' : b >= 1e3 ? (b / 1e3).toFixed(1) + ' kB' : `${b} B`;
const fmtSeconds = (s) => s >= 90 ? `${Math.round(s / 60)} min` : `${Math.max(1, Math.round(s))} s`;
const pct = (x) => (x === null || x === undefined ? '–' : (100 * x).toFixed(2) + '%');
function fmtNumber(name, v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (name.startsWith('bytes') || name.startsWith('resident') || name.startsWith('layers')) return String(Math.round(v));
  if (name.startsWith('ppl')) return v >= 1e4 ? v.toExponential(3) : v.toFixed(2);
  if (name === 'mse' || name === 'kl') return v >= 100 ? v.toFixed(1) : v.toPrecision(4);
  if (name === 'seconds') return v.toFixed(1);
  return v.toFixed(4);
}

const runs = new Runs({ table: $('runs-table'), compare: $('runs-compare'), plot: $('runs-plot'), fmt: { bytes: fmtBytes, pct, number: fmtNumber } });

// ---------- the model ----------
function describeModel(report) {
  const s = report.summary;
  const facts = [
    ['model', `${s.model_type}${s.compressed ? ' (compressed checkpoint)' : ''}`],
    ['layers', `${s.num_layers} (${s.attention.join(', ')})`],
    ['sizes', `hidden ${s.hidden_size}, ${s.num_heads} heads, MLP ${s.intermediate_size}, vocab ${s.vocab_size}, window ${s.window_size}`],
    ['parameters', `${(s.parameters / 1e6).toFixed(2)} M`],
    ['dtype', Object.entries(s.dtypes).map(([d, n]) => `${d} ×${n}`).join(', ')],
    ['files', `${s.files.join(', ')} — ${fmtBytes(s.file_bytes)}`],
    ['head', s.tied_head ? 'tied to the token embedding' : 'lm_head.weight'],
  ];
  if (report.summary.compressed && report.policy) facts.push(['policy', describePolicy(report.policy)]);
  if (report.load_error) facts.push(['not loaded', report.load_error]);
  const held = { 'f32': ' (f32)', 'as-stored': ' (f16/bf16 kept as stored: f32 would not fit)', 'f16': ' (converted to f16: f32 would not fit)' };
  if (report.loaded) facts.push(['in memory', `${fmtBytes(report.loaded.resident_bytes)} measured${held[report.loaded.precision]}`]);
  const dl = $('model-info');
  dl.replaceChildren();
  for (const [k, v] of facts) {
    dl.append(Object.assign(document.createElement('dt'), { textContent: k }), Object.assign(document.createElement('dd'), { textContent: v }));
  }
  for (const miss of report.missing) {
    dl.append(Object.assign(document.createElement('dt'), { textContent: 'missing' }), Object.assign(document.createElement('dd'), { textContent: miss, className: 'missing' }));
  }
}

// The origin's rank 128 was 1/16 of GPT-Neo-1.3B's hidden size: the same ratio on any model.
const originRank = (h) => Math.max(1, Math.round(h / 16));
// The share of linear parameters the origin's fix keeps: attention at the origin's rank (U, S and Vh: r·(m+n+1)
// each), the MLP dense.
function fixFraction({ hidden_size: h, intermediate_size: f }) {
  const r = originRank(h);
  return (4 * r * (2 * h + 1) + 2 * h * f) / (4 * h * h + 2 * h * f);
}
// The presets that name a rank say which one on the model loaded.
function labelPresets() {
  const h = app.model.summary.hidden_size;
  const r = originRank(h);
  const label = {
    default: `Balanced for this model (attention rank ${Math.max(1, Math.round(h / 4))} = h/4, MLP dense)`,
    'origin-all': `The origin's setting: rank ${r} (= hidden ${h} / 16, as 128 of 2048) on every linear layer, per-tensor INT8`,
    'origin-mlp': `The origin's fix: rank ${r} with the MLP dense, per-tensor INT8`,
    'aware-same': `Activation-aware at the fix's size: its ${(100 * fixFraction(app.model.summary)).toFixed(1)}% of linear parameters spread over every layer, calibrated`,
  };
  for (const o of $('preset').options) if (label[o.value]) o.textContent = label[o.value];
}

function applyPreset(name) {
  const h = app.model ? app.model.summary.hidden_size : 256;
  const set = (o) => {
    $('method').value = o.method || 'svd';
    $('rank').value = o.rank ?? app.defaults.rank;
    $('quant').value = o.quant || 'per-row';
    $('min-dim').value = o.minDim ?? 0;
    $('skip').value = o.skip ?? '';
    $('rank-for').value = o.rankFor ?? '';
    $('energy').value = o.energy ?? '';
    $('budget').value = o.budget ?? '';
    $('budget-mode').value = o.budgetMode || 'energy';
    $('refine-steps').value = o.refineSteps ?? 0;
    $('guard').checked = o.guard ?? true;
    $('target-metric').value = '';
    $('target-value').value = '';
  };
  const presets = {
    default: { rank: Math.max(1, Math.round(h / 4)), skip: 'mlp.c_fc, mlp.c_proj' },
    'origin-all': { rank: originRank(h), quant: 'per-tensor', guard: false },
    'origin-mlp': { rank: originRank(h), quant: 'per-tensor', guard: false, skip: 'mlp.c_fc, mlp.c_proj' },
    'aware-same': { method: 'whitened', budget: app.model ? +fixFraction(app.model.summary).toFixed(4) : 0.7, budgetMode: 'energy' },
    int8: { method: 'int8' },
    whitened: { method: 'whitened', rank: 32 },
    refit: { method: 'refit', budget: 0.2, budgetMode: 'proportional' },
    budget: { budget: 0.5, budgetMode: 'energy' },
  };
  if (presets[name]) set(presets[name]);
  updatePreview();
}

function policyFromForm() {
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
    quant_bits: quant === 'none' ? 32 : 8,
    quant: quant === 'none' ? 'per-row' : quant,
    energy: num('energy'),
    budget: num('budget'),
    budget_mode: $('budget-mode').value,
    break_even_guard: $('guard').checked,
    allocation_check: $('allocation-check').checked,
    refine_steps: refineSteps(),
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

// ---------- the preview: what the setting stores, before it runs ----------
// Asked of the worker (the core plans it) whenever the form changes; drawn in room kept for it.
let previewTimer = 0;
function updatePreview() {
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
    $('preview').dataset.linearAfter = p.linear_bytes_after ?? '';
    $('preview').dataset.totalAfter = p.total_bytes_after ?? '';
    const less = (a, b) => `${(100 * (1 - b / a)).toFixed(1)}% smaller`;
    const n = p.matrices.length;
    sizes.replaceChildren();
    if (p.linear_bytes_after !== null && p.linear_bytes_after !== undefined) {
      sizes.append('Stores: linear layers ', strong(`${fmtBytes(p.linear_bytes_before)} → ${fmtBytes(p.linear_bytes_after)}`),
        ` (${less(p.linear_bytes_before, p.linear_bytes_after)}); other tensors ${fmtBytes(p.bytes_untouched)} as stored; all tensors `,
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
      const d = m.decision === 'low-rank' ? `rank ${m.rank}` : m.decision === 'from-spectrum' ? 'rank from its spectrum' : m.decision === 'int8' ? 'INT8' : 'dense';
      by.set(d, (by.get(d) || 0) + 1);
    }
    parts.push(`${kind}: ${[...by].map(([d, k]) => `${d}${list.length > 1 ? ` ×${k}` : ''}`).join(', ')}`);
  }
  return parts.join(' · ');
}

// The quality target, or undefined when the form asks for none.
function targetFromForm() {
  const metric = $('target-metric').value;
  if (!metric) return undefined;
  const value = Number($('target-value').value);
  if ($('target-value').value.trim() === '' || !Number.isFinite(value)) {
    throw new Error(`the quality target needs a value (${metric === 'cosine' ? 'a cosine in (0, 1]' : 'a perplexity ratio ≥ 1'})`);
  }
  return { target: { [metric]: value }, tolerance: Number($('target-tolerance').value) || 0.02 };
}

// The target search's path: every budget tried, the kept one marked.
function renderTarget(search) {
  $('target-result').hidden = !search;
  const body = $('target-path').querySelector('tbody');
  body.replaceChildren();
  if (!search) return;
  const over = search.next_budget === null || search.next_budget === undefined;
  search.path.forEach((p, i) => {
    const tr = document.createElement('tr');
    const kept = over && p.budget === search.best;
    if (kept) tr.className = 'kept';
    for (const text of [p.budget.toFixed(4), pct(p.params_kept), p.cosine.toFixed(4), p.ppl.toFixed(2),
      p.ppl_ratio.toFixed(3), (search.path_met[i] ? 'yes' : 'no') + (kept ? ' (kept)' : '')]) {
      tr.append(Object.assign(document.createElement('td'), { textContent: text }));
    }
    body.append(tr);
  });
}

// ?workers=N caps the workers an evaluation uses (the benchmark compares 1 with the default)
const WORKERS = Number(new URLSearchParams(location.search).get('workers')) || undefined;
function evalSpec() {
  const text = $('eval-text').value.trim();
  return { tokens: Number($('eval-tokens').value) || 2048, window: Number($('eval-window').value) || 512, workers: WORKERS, ...(text ? { text } : {}) };
}

// ---------- the layer table ----------
function startTable(matrices) {
  app.plan = matrices;
  app.layers = [];
  $('layer-errors').querySelector('tbody').replaceChildren();
}
function rowFor(l) {
  const tr = document.createElement('tr');
  tr.className = l.decision === 'dense' ? 'dense' : '';
  tr.dataset.name = l.name;
  const cells = [
    [l.name, ''],
    [`${l.shape[0]}×${l.shape[1]}`, 'num'],
    [l.rank ?? '–', 'num'],
    [pct(l.err_svd), 'num'],
    [pct(l.err_stored), 'num'],
    [l.bytes_before ? fmtBytes(l.bytes_before) : '–', 'num'],
    [fmtBytes(l.bytes_after), 'num'],
    [l.reason ? `dense — ${l.reason}` : l.storage + (l.err_activations != null ? ` · error on calibration activations ${pct(l.err_activations)}` : ''), 'why'],
  ];
  for (const [text, cls] of cells) tr.append(Object.assign(document.createElement('td'), { textContent: text, className: cls }));
  if (l.err_stored !== null && l.err_stored !== undefined && l.decision !== 'dense') {
    const bar = Object.assign(document.createElement('span'), { className: 'bar' });
    bar.style.width = `${Math.min(100, 100 * l.err_stored) * 0.6}px`;
    tr.children[4].append(bar);
  }
  tr.addEventListener('click', () => { $('spectrum-layer').value = l.name; drawLayerPlots(); });
  return tr;
}
function addLayer(l) {
  app.layers.push(l);
  $('layer-errors').querySelector('tbody').append(rowFor(l));
  const sel = $('spectrum-layer');
  if (l.singular_values || l.decision !== 'dense') {
    sel.append(new Option(l.name.replace(/^transformer\./, '').replace(/\.weight$/, ''), l.name));
    if (sel.options.length === 1) { sel.value = l.name; drawLayerPlots(); }
  }
}
function renderLayers(list) {
  app.layers = list.slice();
  const sel = $('spectrum-layer');
  const keep = sel.value;
  sel.replaceChildren();
  for (const l of app.layers) {
    if (l.singular_values || l.decision !== 'dense') sel.append(new Option(l.name.replace(/^transformer\./, '').replace(/\.weight$/, ''), l.name));
  }
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  sortTable();
  drawLayerPlots();
}
function sortTable() {
  const { key, dir } = app.sort;
  const list = app.layers.slice();
  if (key) {
    const val = (l) => key === 'shape' ? l.shape[0] * l.shape[1] : key === 'storage' ? (l.reason || l.storage) : l[key];
    list.sort((a, b) => {
      const x = val(a), y = val(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * dir;
    });
  }
  $('layer-errors').querySelector('tbody').replaceChildren(...list.map(rowFor));
  for (const th of $('layer-errors').querySelectorAll('th')) {
    th.setAttribute('aria-sort', th.dataset.key === key ? (dir > 0 ? 'ascending' : 'descending') : 'none');
  }
}
for (const th of document.querySelectorAll('#layer-errors th')) {
  th.querySelector('button').addEventListener('click', () => {
    app.sort = { key: th.dataset.key, dir: app.sort.key === th.dataset.key ? -app.sort.dir : 1 };
    sortTable();
  });
}

// ---------- plots ----------
const spectra = new Map();
async function drawLayerPlots() {
  const name = $('spectrum-layer').value;
  const l = app.layers.find((x) => x.name === name);
  if (!l) { plots.spectrum($('spectrum-plot'), null); plots.errorCurve($('error-plot'), null); return; }
  let values = l.singular_values || spectra.get(name);
  if (!values && app.loaded && !app.pending.size) {
    try {
      values = (await send({ cmd: 'spectrum', name })).values;
      spectra.set(name, values);
      setState('done', 'done');
    } catch (err) { if (!err.cancelled) showError(err.message); }
  }
  plots.spectrum($('spectrum-plot'), values, l.rank);
  plots.errorCurve($('error-plot'), values, l.rank, l.err_stored);
}
$('spectrum-layer').addEventListener('change', drawLayerPlots);

// ---------- the summary ----------
function renderSummary(ev, extra = {}) {
  const values = { ...ev, ...extra };
  for (const node of document.querySelectorAll('#summary [data-metric]')) {
    const name = node.dataset.metric;
    node.textContent = fmtNumber(name, values[name]);
    node.title = values[name] === undefined || values[name] === null ? '' : String(values[name]);
    if (name.startsWith('bytes') || name.startsWith('resident')) node.title = values[name] ? fmtBytes(values[name]) : '';
  }
  for (const node of document.querySelectorAll('#summary [data-human]')) {
    const v = values[node.dataset.human];
    node.textContent = v ? fmtBytes(v) : '';
  }
  const cos = values.cosine;
  const card = document.querySelector('[data-metric="cosine"]').closest('.metric');
  card.classList.toggle('good', cos >= 0.99);
  card.classList.toggle('bad', cos !== null && cos !== undefined && cos < 0.9);
  const mb = (k) => (values[k] ? fmtBytes(values[k]) : '–');
  $('summary-note').textContent = ev.convention
    ? `On ${ev.text_name || 'the text'}: ${ev.convention}. Sizes: original ${mb('bytes_original')}, compressed ${mb('bytes_compressed')} of tensors; the compressed model holds ${mb('resident_bytes_compressed')} in memory (measured by the allocator).`
    : '';
}
function clearSummary() {
  for (const node of document.querySelectorAll('#summary [data-metric]')) node.textContent = '–';
  for (const node of document.querySelectorAll('#summary [data-human]')) node.textContent = '';
  $('summary-note').textContent = '';
}

// ---------- generation ----------
function addToken(m) {
  const list = app.gen[m.which];
  const span = document.createElement('span');
  span.textContent = m.text;
  span.dataset.id = m.id;
  list.push({ id: m.id, span, token: m.token });
  $(`gen-${m.which}`).append(span);
  if (m.tokens_per_s) $(`rate-${m.which}`).textContent = `${m.tokens_per_s.toFixed(1)} tokens/s`;
  markDivergence();
}
function markDivergence() {
  const { original: o, compressed: c } = app.gen;
  if (app.gen.diverged >= 0) return;
  const n = Math.min(o.length, c.length);
  for (let i = 0; i < n; i++) {
    if (o[i].id !== c[i].id) {
      app.gen.diverged = i;
      const mark = document.createElement('mark');
      mark.className = 'diverge';
      mark.title = `first different token (#${i + 1}): original ${JSON.stringify(o[i].token)}, compressed ${JSON.stringify(c[i].token)}`;
      c[i].span.replaceWith(mark);
      mark.append(c[i].span);
      $('gen-note').textContent = `The continuations part at token ${i + 1}: original ${JSON.stringify(o[i].token)}, compressed ${JSON.stringify(c[i].token)}.`;
      return;
    }
  }
}

// ---------- actions ----------
function resetResults() {
  app.compressed = false;
  app.canExport = false;
  startTable([]);
  clearSummary();
  $('spectrum-layer').replaceChildren();
  plots.spectrum($('spectrum-plot'), null);
  plots.errorCurve($('error-plot'), null);
  renderTarget(null);
  delete $('summary').dataset.targetBudget;
  app.currentRun = null;
}

function open(msg, name) {
  run({ cmd: 'open', evalSpec: evalSpec(), ...msg }, (report) => {
    if (report.kind === 'original') {
      app.source = msg.demo ? { demo: true } : { files: msg.files };
      app.checkpoint = null;
      app.model = report;
      app.name = name || 'model';
      app.opened = true;
      app.loaded = !!report.loaded;
      app.precision = report.loaded ? report.loaded.precision : null;
      resetResults();
      runs.clear();
      app.sweepPoints = [];
      app.sensRows = [];
      drawSweep();
      drawHeatmap();
      updatePreview();
      describeModel(report);
      labelPresets();
      if ($('preset').value !== 'custom') applyPreset($('preset').value);
      if (app.afterOpen) { const f = app.afterOpen; app.afterOpen = null; f(); }
      setBusy(false);
      setState('ready', 'ready');
      return;
    }
    // a compressed checkpoint exported by this page or the CLI
    app.compressed = true;
    if (report.matches_original) app.checkpoint = msg.files.find((f) => f.name.endsWith('.safetensors')) || null;
    else { app.source = { files: msg.files }; app.checkpoint = null; }
    app.canExport = false;
    if (!report.matches_original) {
      app.loaded = false;
      app.opened = false;
      app.model = null;
      describeModel(report);
    }
    renderLayers(report.layers_reports || []);
    if (report.evaluation) {
      renderSummary(report.evaluation, { seconds: report.evaluation.seconds });
    } else {
      clearSummary();
      $('summary-note').textContent = report.eval_error
        ? `Loaded a compressed checkpoint; not evaluated: ${report.eval_error}`
        : 'Loaded a compressed checkpoint without its original model: open the original first to compare them.';
    }
    setBusy(false);
    setState('done', report.matches_original ? 'compressed checkpoint loaded' : 'compressed model loaded alone');
  });
}

const reduceMotion = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
function reveal(id) {
  $(id).scrollIntoView({ behavior: reduceMotion ? 'auto' : 'smooth', block: 'start' });
}

function compress() {
  let policy;
  let target;
  try { policy = policyFromForm(); target = targetFromForm(); } catch (err) { showError(err.message); return; }
  compressJob(policy, target).catch((err) => {
    if (err.lost) return; // workerLost has said what happened
    if (err.cancelled) resetResults();
    else showError(err.message);
  });
}

// One compression and its evaluation (`evalOverride` changes the evaluation's settings), its results rendered;
// resolves with the worker's result, rejects as the job does.
async function compressJob(policy, target, evalOverride = {}, { reveal: show = true } = {}) {
  saveSettingInUrl();
  resetResults();
  if (show) reveal('results-panel');
  const t0 = performance.now();
  const r = await send({ cmd: 'compress', policy, evalSpec: { ...evalSpec(), ...evalOverride }, target });
  showCompression(r, policy, t0);
  return r;
}

function showCompression(r, policy, t0) {
  if (r.target) {
    renderTarget(r.target);
    policy = { ...policy, budget: r.target.best };
    $('summary').dataset.targetBudget = String(r.target.best);
  }
  app.compressed = true;
  app.canExport = true;
  app.checkpoint = r.checkpoint || null;
  // every matrix's report (a refit's matrices are reported when their block is done, not one by one)
  renderLayers(r.layers);
  const ev = r.evaluation;
  const seconds = (performance.now() - t0) / 1000;
  // what compression could touch (the linear layers) and what it could not, each as stored
  const f = r.finished;
  const lin = f.totals;
  $('summary').dataset.linearBytes = `${lin.bytes_considered},${lin.bytes_after},${f.bytes_untouched}`;
  const split = ` Linear layers (what compression can touch): ${fmtBytes(lin.bytes_considered)} → ${fmtBytes(lin.bytes_after)}`
    + ` (${lin.bytes_considered ? (100 * (1 - lin.bytes_after / lin.bytes_considered)).toFixed(1) : '0.0'}% smaller);`
    + ` the other tensors (embeddings, norms, biases, a tied head): ${fmtBytes(f.bytes_untouched)}, as stored.`;
  $('summary').dataset.compressSeconds = r.compress_seconds.toFixed(2);
  const check = allocationCheckNote(f.allocation_check);
  $('summary').dataset.allocationKept = f.allocation_check ? String(f.allocation_check.kept_mode) : '';
  $('summary').dataset.compressWorkers = String(r.workers.count);
  $('summary').dataset.workerHeaps = r.workers.heaps.join(',');
  // the coordinator's heap, then each helper's: what the compression took per worker
  const by = r.workers.count > 1
    ? ` on ${r.workers.count} workers (heap per worker up to ${fmtBytes(Math.max(...r.workers.heaps.slice(1)))})`
    : '';
  if (!ev) {
    // the original is not in memory: sizes only
    renderSummary({}, { seconds, bytes_original: f.bytes_original, bytes_compressed: f.tensor_bytes,
      resident_bytes_compressed: f.resident_bytes, layers_compressed: f.layers_compressed, layers_total: f.layers_total });
    $('summary-note').textContent = `Compressed in ${r.compress_seconds.toFixed(1)} s${by}.${split}${check} Not evaluated: ${r.eval_error || 'no evaluation was asked for'}. The compressed checkpoint can be exported.`;
    setBusy(false);
    setState('done', 'compressed (not evaluated)');
    return;
  }
  renderSummary(ev, { seconds });
  $('summary').dataset.evalSeconds = ev.seconds.toFixed(2);
  const how = ev.workers > 1 ? ` by ${ev.workers} workers` : ev.streamed ? ', the original read from its file a block at a time' : '';
  $('summary-note').textContent += `${split}${check} Compressed in ${r.compress_seconds.toFixed(1)} s${by}, evaluated in ${ev.seconds.toFixed(1)} s${how}.`;
  $('summary').dataset.helpersReplaced = String(r.helpers_replaced || 0);
  if (r.helpers_replaced) $('summary-note').textContent += ` ${r.helpers_replaced === 1 ? 'A helper worker' : `${r.helpers_replaced} helper workers`} died during the job and ${r.helpers_replaced === 1 ? 'was' : 'were'} replaced; ${r.helpers_replaced === 1 ? 'its' : 'their'} work was redone.`;
  // kept for the comparison: the layer table without its spectra (they are for the plots of the current run)
  app.currentRun = runs.add({
    policy: describePolicy(policy), ev, seconds, untouched: f.bytes_untouched,
    linear: { before: lin.bytes_considered, after: lin.bytes_after },
    layers: r.layers.map(({ name, rank, err_stored, bytes_after, storage }) => ({ name, rank, err_stored, bytes_after, storage })),
  });
  drawSweep();
  setBusy(false);
  setState('done', 'done');
}

// The allocation check's finding as a sentence (empty when it did not run).
function allocationCheckNote(k) {
  if (!k) return '';
  const mode = { energy: 'energy', uniform: 'one rank for all', loss: 'loss' }[k.mode] || k.mode;
  const m = k.mode_damage, p = k.proportional_damage;
  return ` Allocation checked on the first ${k.tokens} calibration tokens (KL of the logits against the original's, per position): ${mode} ${m.kl.toFixed(4)}, same fraction each ${p.kl.toFixed(4)}; `
    + (k.kept_mode ? `the ${mode} allocation is kept.` : `the same fraction of each matrix is stored instead.`);
}

function describePolicy(p) {
  if (p.method === 'int8') return 'INT8 only';
  const aware = { whitened: 'activation-aware, ', refit: 'activation-aware + refit, ' }[p.method] || '';
  p = { rank_for: [], skip: [], ...p };
  const parts = [p.budget ? `budget ${p.budget} (${p.budget_mode})` : p.energy ? `energy ${p.energy}` : `rank ${p.rank}`];
  if (p.rank_for.length) parts.push(p.rank_for.map((r) => `${r.pattern}=${r.rank}`).join(' '));
  if (p.skip.length) parts.push(`skip ${p.skip.join(' ')}`);
  parts.push(p.quant_bits === 8 ? p.quant : 'f32 factors');
  if (p.refine_steps > 0) parts.push(`refined ${p.refine_steps} steps per block`);
  return aware + parts.join(', ');
}

function samplingParams() {
  const num = (id) => Number($(id).value);
  return { max_new_tokens: num('max-new-tokens'), temperature: num('temperature'), top_k: num('top-k'),
    top_p: num('top-p'), seed: num('seed'), stop_at_eos: $('stop-at-eos').checked };
}

function generate() {
  app.gen = { original: [], compressed: [], diverged: -1 };
  for (const w of ['original', 'compressed']) { $(`gen-${w}`).replaceChildren(); $(`rate-${w}`).textContent = ''; }
  $('gen-note').textContent = '';
  reveal('generate-panel');
  const which = [];
  if (app.loaded) which.push('original');
  if (app.compressed) which.push('compressed');
  const prompt = $('prompt').value;
  run({ cmd: 'generate', prompt, params: samplingParams(), which }, (r) => {
    keepGeneration(prompt, which);
    if (which.length === 2 && app.gen.diverged < 0) {
      $('gen-note').textContent = `Both models produced the same ${Math.min(r.original.tokens, r.compressed.tokens)} tokens.`;
    } else if (which.length === 1) {
      $('gen-note').textContent = `Only the ${which[0]} model is loaded; compress to compare.`;
    }
    if (which.includes('original') && app.precision === 'f16') {
      $('gen-note').textContent += ' The original ran with its f32 weights converted to f16: f32 does not fit in this tab.';
    }
    setState('done', 'done');
  }, () => {
    for (const w of ['original', 'compressed']) { $(`gen-${w}`).replaceChildren(); $(`rate-${w}`).textContent = ''; }
    app.gen = { original: [], compressed: [], diverged: -1 };
    $('gen-note').textContent = 'Generation cancelled.';
  });
}

// The continuations just streamed join the run whose compressed model made them.
function keepGeneration(prompt, which) {
  if (!app.currentRun) return;
  for (const w of which) runs.setGeneration(app.currentRun, prompt, w, app.gen[w].map((t) => t.span.textContent).join(''));
}

// The same prompt continued by `which` models, streamed into the generation panel; resolves with each one's text.
async function generateJob(which) {
  app.gen = { original: [], compressed: [], diverged: -1 };
  for (const w of which) { $(`gen-${w}`).replaceChildren(); $(`rate-${w}`).textContent = ''; }
  const prompt = $('prompt').value;
  await send({ cmd: 'generate', prompt, params: samplingParams(), which });
  keepGeneration(prompt, which);
  setBusy(false);
  return Object.fromEntries(which.map((w) => [w, app.gen[w].map((t) => t.span.textContent).join('')]));
}

// ---------- the origin's story ----------
// The origin's presets in order, each compressed, evaluated on the same tokens (those after the calibration text,
// so that the calibrated step is measured on text it did not see) and continuing the same prompt; laid out as one
// comparison. Cancel stops it after the job in progress.
function storySteps(summary) {
  const h = summary.hidden_size;
  const r = originRank(h);
  const fix = fixFraction(summary);
  return [
    { preset: 'origin-all', title: `The origin's setting: rank ${r} everywhere`,
      why: `Rank ${r} is hidden/16, as the origin's 128 was for GPT-Neo-1.3B's 2048, on every linear layer with per-tensor INT8 factors: the setting of the debugging report.` },
    { preset: 'origin-mlp', title: 'The origin\'s fix: the MLP dense',
      why: `The same, with the MLP's two matrices kept dense. It keeps ${(100 * fix).toFixed(1)}% of the linear parameters: the MLP holds most of them.` },
    { preset: 'aware-same', title: 'Activation-aware at the fix\'s size',
      why: `The fix's ${(100 * fix).toFixed(1)}% of linear parameters spread over every layer, each matrix truncated where its inputs (measured on calibration text) are least sensitive, per-row INT8.` },
    { preset: 'int8', title: 'INT8 only',
      why: 'No SVD: every linear layer as INT8 codes with a scale per row. The baseline any factorization has to beat on bytes.' },
    { preset: 'budget', title: 'Half the linear parameters',
      why: 'Plain SVD at 50% of the linear parameters, ranks allocated by spectral energy: what a budget buys without calibration.' },
  ];
}

function storyCell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.append(td);
  return td;
}

async function tellStory() {
  const steps = storySteps(app.model.summary);
  const body = $('story-table').querySelector('tbody');
  body.replaceChildren();
  $('story-panel').hidden = false;
  $('story').disabled = true;
  app.story = { running: true, cancelled: false };
  // how the story ended, for whoever waits on it (the status also reads 'done' after each step's compression)
  const told = (how) => { $('story-panel').dataset.told = how; };
  told('running');
  const skip = app.defaults.calibration_tokens;
  $('story-note').textContent = `Prompt: ${JSON.stringify($('prompt').value)}. Every step is evaluated on the same ${evalSpec().tokens} tokens of the built-in text, those after its first ${skip} (the calibration text of the activation-aware step).`;
  let done = 0;
  // every row laid out before the first run, its cells sized for what will fill them: nothing moves as results
  // stream in
  const row = (step, cells) => {
    const tr = document.createElement('tr');
    tr.dataset.step = step;
    const out = cells.map(([t, cls]) => storyCell(tr, t, cls));
    body.append(tr);
    return { tr, cells: out };
  };
  const continuation = (td, text) => {
    td.replaceChildren(Object.assign(document.createElement('div'), { textContent: text }));
  };
  const first = row('original', [['0'], ['The original model', 'what'], ['1'], ['100%'], ['–'], ['–'], ['–'], ['', 'continuation']]);
  continuation(first.cells[7], 'generating…');
  const rows = steps.map((step, i) => {
    const r = row(step.preset, [[String(i + 1)], ['', 'what'], ['…'], ['…'], ['…'], ['…'], ['…'], ['', 'continuation']]);
    r.cells[1].append(Object.assign(document.createElement('strong'), { textContent: step.title }), document.createElement('br'), step.why);
    continuation(r.cells[7], 'waiting');
    return r;
  });
  try {
    const { original } = await generateJob(['original']);
    continuation(first.cells[7], original);
    for (const [i, step] of steps.entries()) {
      if (app.story.cancelled) throw Object.assign(new Error('cancelled'), { cancelled: true });
      $('preset').value = step.preset;
      applyPreset(step.preset);
      const { tr, cells } = rows[i];
      continuation(cells[7], 'compressing…');
      tr.scrollIntoView({ block: 'nearest', behavior: reduceMotion ? 'auto' : 'smooth' });
      const r = await compressJob(policyFromForm(), undefined, { skip }, { reveal: false });
      const ev = r.evaluation;
      const lin = r.finished.totals;
      const values = [ev.cosine.toFixed(4), pct(ev.top1), `${fmtNumber('ppl_compressed', ev.ppl_compressed)} (original ${fmtNumber('ppl_original', ev.ppl_original)})`,
        `${fmtBytes(lin.bytes_considered)} → ${fmtBytes(lin.bytes_after)}`, `${fmtBytes(ev.bytes_original)} → ${fmtBytes(ev.bytes_compressed)}`];
      values.forEach((v, k) => { cells[k + 2].textContent = v; });
      tr.dataset.cosine = String(ev.cosine);
      tr.classList.toggle('bad', ev.cosine < 0.9);
      tr.classList.toggle('good', ev.cosine >= 0.95);
      continuation(cells[7], 'generating…');
      const { compressed } = await generateJob(['compressed']);
      continuation(cells[7], compressed);
      done += 1;
    }
    $('story-note').textContent += ' The story is told: the setting breaks the model, keeping the MLP dense saves it at little saving, and activation-aware SVD at the same parameter count compresses every layer and keeps the quality.';
    setState('done', 'story told');
    told('done');
  } catch (err) {
    if (err.lost) {
      $('story-note').textContent += ` Stopped after ${done} of ${steps.length} steps: the worker was lost (see above).`;
      told('lost');
      return;
    }
    if (err.cancelled) {
      $('story-note').textContent += ` Cancelled after ${done} of ${steps.length} steps.`;
      setState(app.loaded ? 'ready' : 'idle', 'story cancelled');
      told('cancelled');
    } else {
      showError(err.message);
      told('error');
    }
  } finally {
    app.story.running = false;
    setBusy(app.pending.size > 0);
    // the button was disabled while the story ran, which drops the focus: give it back to a keyboard user
    if (document.activeElement === document.body) $('story').focus();
  }
}

// ---------- the explorer ----------
// A sweep (methods × budgets, each compressed and measured) and a sensitivity table (each matrix compressed alone),
// both run by the worker and its helpers, streamed in point by point and row by row; cancel stops them.
function sweepSettings() {
  const recipes = [...document.querySelectorAll('#sweep-recipes input:checked')].map((i) => i.value);
  if (!recipes.length) throw new Error('the sweep needs at least one method: tick one');
  const budgets = $('sweep-budgets').value.split(',').map((x) => x.trim()).filter(Boolean).map(Number);
  if (!budgets.length || budgets.some((b) => !(b > 0 && b <= 1))) throw new Error(`sweep budgets "${$('sweep-budgets').value}" must be fractions in (0, 1], comma-separated`);
  const tokens = Number($('sweep-tokens').value);
  if (!(Number.isInteger(tokens) && tokens >= 2)) throw new Error('the sweep measures at least 2 tokens');
  // the form's storage and calibration; each recipe brings its method and allocation, each point its budget
  const base = { ...policyFromForm(), skip: [], rank_for: [], energy: null, budget: null };
  return { recipes, budgets, base, evalTokens: tokens };
}
function drawSweep() {
  const metric = $('sweep-metric').value;
  const r = app.currentRun;
  const current = r ? { bytes: r.linear.after, value: metric === 'cosine' ? r.ev.cosine : r.ev.ppl_compressed / r.ev.ppl_original } : null;
  const original = r ? r.linear.before : app.linearBytes || null;
  plots.sweep($('sweep-plot'), app.sweepPoints, { metric, current, original });
  // the same points as numbers, in the order they were asked for
  $('sweep-table').querySelector('tbody').replaceChildren(...app.sweepPoints.filter(Boolean).map((p) => {
    const tr = document.createElement('tr');
    tr.dataset.recipe = p.recipe;
    tr.dataset.budget = p.budget ?? '';
    tr.dataset.cosine = String(p.cosine);
    tr.dataset.pplRatio = String(p.ppl_ratio);
    for (const [text, cls] of [[p.recipe, ''], [p.budget ?? '–', 'num'], [pct(p.params_kept), 'num'], [fmtBytes(p.layer_bytes), 'num'],
      [p.cosine.toFixed(4), 'num'], [pct(p.top1), 'num'], [p.ppl_ratio.toFixed(3), 'num'], [p.seconds.toFixed(1), 'num']]) {
      tr.append(Object.assign(document.createElement('td'), { textContent: String(text), className: cls }));
    }
    return tr;
  }));
}
$('sweep-metric').addEventListener('change', drawSweep);
function runSweep() {
  let spec;
  try { spec = sweepSettings(); } catch (err) { showError(err.message); return; }
  app.sweepPoints = [];
  drawSweep();
  $('sweep-note').textContent = `Sweeping ${spec.recipes.join(', ')} at ${spec.budgets.join(', ')}…`;
  run({ cmd: 'sweep', ...spec, evalSpec: evalSpec() }, (r) => {
    app.sweepPoints = r.points;
    drawSweep();
    const split = `the ${spec.evalTokens} tokens after the first ${spec.base.calibration_tokens} of ${$('eval-text').value.trim() ? 'your text' : 'eval-dev.txt'} (those calibrate the activation-aware methods)`;
    $('sweep-note').textContent = `${r.points.length} compressions in ${r.seconds.toFixed(1)} s on ${r.workers} worker${r.workers > 1 ? 's' : ''}, each measured on ${split}; the current run is measured on its own tokens (${evalSpec().tokens}).`;
    $('sweep-plot').dataset.points = String(r.points.length);
    setState('done', 'sweep done');
  }, () => { $('sweep-note').textContent = `Sweep cancelled after ${app.sweepPoints.filter(Boolean).length} points (drawn).`; });
}
// the sensitivity table is measured with the form's method (SVD or activation-aware) and rank, or its budget as
// each matrix's fraction of parameters
function sensitivityPolicy() {
  const p = policyFromForm();
  const method = p.method === 'refit' ? 'whitened' : p.method === 'int8' ? 'svd' : p.method;
  const tokens = Number($('sens-tokens').value);
  if (!(Number.isInteger(tokens) && tokens >= 2)) throw new Error('the sensitivity probe needs at least 2 tokens');
  return { ...p, method, probe: p.budget || null, budget: null, energy: null, skip: [], sensitivity_tokens: tokens };
}
function skipList() {
  return $('skip').value.split(',').map((x) => x.trim()).filter(Boolean);
}
const patternOf = (name) => name.replace(/^transformer\./, '').replace(/\.weight$/, '');
function drawHeatmap() {
  const skipped = app.sensRows.map((r) => r.name).filter((n) => skipList().includes(patternOf(n)));
  plots.heatmap($('heatmap'), app.sensRows, { layers: app.model ? app.model.summary.num_layers : undefined, skipped, onPick: pickMatrix });
}
// a heatmap cell clicked: that matrix joins the skip list (or leaves it), and the preview follows
function pickMatrix(row) {
  const pattern = patternOf(row.name);
  const list = skipList();
  const i = list.indexOf(pattern);
  if (i >= 0) list.splice(i, 1); else list.push(pattern);
  $('skip').value = list.join(', ');
  $('skip').dispatchEvent(new Event('input'));
  $('sens-note').textContent = `${pattern} ${i >= 0 ? 'left' : 'joined'} the skip list (KL ${row.damage.kl.toPrecision(3)} when compressed alone).`;
  drawHeatmap();
  const cell = $('heatmap').querySelector(`[data-name="${row.name}"]`);
  if (cell) cell.focus();
}
function measureSensitivity() {
  let policy;
  try { policy = sensitivityPolicy(); } catch (err) { showError(err.message); return; }
  app.sensRows = [];
  drawHeatmap();
  const how = policy.probe ? `${(100 * policy.probe).toFixed(0)}% of each matrix's parameters` : `rank ${policy.rank}`;
  $('sens-note').textContent = `Measuring every matrix alone at ${how}…`;
  run({ cmd: 'sensitivity', policy, evalSpec: evalSpec() }, (r) => {
    app.sensRows = r.rows;
    drawHeatmap();
    const worst = r.rows.slice().sort((a, b) => b.damage.kl - a.damage.kl)[0];
    $('sens-note').textContent = `${r.rows.length} matrices, each compressed alone (${policy.method === 'whitened' ? 'activation-aware' : 'plain SVD'}, ${how}), measured on the first ${policy.sensitivity_tokens} tokens of the calibration text in ${r.seconds.toFixed(1)} s on ${r.workers} worker${r.workers > 1 ? 's' : ''}. Most damaging: ${worst ? `${patternOf(worst.name)} (KL ${worst.damage.kl.toPrecision(3)})` : '–'}. Click a cell to keep that matrix dense.`;
    $('heatmap').dataset.rows = String(r.rows.length);
    setState('done', 'sensitivity measured');
  }, () => { $('sens-note').textContent = `Cancelled after ${app.sensRows.length} matrices (drawn).`; });
}

function exportCheckpoint() {
  run({ cmd: 'export', name: `${app.name}-compressed.safetensors` }, ({ blob, name }) => {
    const a = $('download');
    const url = URL.createObjectURL(blob);
    a.href = url;
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    setState('done', `exported ${fmtBytes(blob.size)}`);
  });
}

// ---------- the report and the link ----------
// The form's fields, by id: what a link (the URL's hash) and the report carry.
const FIELDS = ['preset', 'method', 'rank', 'quant', 'min-dim', 'skip', 'rank-for', 'energy', 'budget', 'budget-mode',
  'guard', 'allocation-check', 'refine-steps', 'calibration-tokens', 'eval-tokens', 'eval-window', 'target-metric', 'target-value', 'target-tolerance',
  'prompt', 'max-new-tokens', 'temperature', 'top-k', 'top-p', 'seed', 'stop-at-eos'];
function formFields() {
  return Object.fromEntries(FIELDS.map((id) => [id, $(id).type === 'checkbox' ? ($(id).checked ? '1' : '0') : $(id).value]));
}
function setFormFields(values) {
  for (const id of FIELDS) {
    if (!(id in values)) continue;
    if ($(id).type === 'checkbox') $(id).checked = values[id] === '1';
    else $(id).value = values[id];
  }
}
// The setting as the URL's hash (the demo model named, so a bookmark reopens it): written at every compression.
function settingLink() {
  const params = new URLSearchParams(formFields());
  if (app.source && app.source.demo) params.set('model', 'demo');
  return `${location.origin}${location.pathname}${location.search}#${params}`;
}
function saveSettingInUrl() {
  history.replaceState(null, '', settingLink());
}

async function downloadReport() {
  let css = '';
  try { css = await (await fetch(new URL('./style.css', import.meta.url))).text(); } catch { /* a report without the page's style */ }
  let policy;
  try { policy = describePolicy(policyFromForm()); } catch (err) { policy = err.message; }
  const title = `Compression report: ${app.name}`;
  const html = reportHtml(document, { title, policy, settings: formFields(), css, link: settingLink(), made: new Date().toISOString().slice(0, 10) });
  const a = $('download');
  const url = URL.createObjectURL(new Blob([html], { type: 'text/html' }));
  a.href = url;
  a.download = `${app.name}-report.html`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  setState($('status').dataset.state, `report saved (${fmtBytes(html.length)})`);
}

// files dropped as folders are walked with the entries API
async function filesFromDrop(dt) {
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dt.files];
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) out.push(await new Promise((res, rej) => entry.file(res, rej)));
    else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e);
      }
    }
  };
  for (const e of entries) await walk(e);
  return out;
}

// ---------- wiring ----------
// a name for exported files: the demo's, the folder's, or the checkpoint file's
function nameFrom(files) {
  const folder = files.find((f) => f.webkitRelativePath)?.webkitRelativePath.split('/')[0];
  const weights = files.find((f) => f.name.endsWith('.safetensors'))?.name.replace(/\.safetensors$/, '');
  return folder || (weights && weights !== 'model' ? weights : 'model');
}
function openFiles(files) {
  if (!files.length) return;
  const name = nameFrom(files);
  open({ files }, name);
}
$('load-demo').addEventListener('click', () => open({ demo: true }, 'neo-bard-8l'));
$('files').addEventListener('change', (e) => { const f = [...e.target.files]; e.target.value = ''; openFiles(f); });
$('folder').addEventListener('change', (e) => { const f = [...e.target.files]; e.target.value = ''; openFiles(f); });
const dz = $('dropzone');
dz.addEventListener('dragover', (e) => { e.preventDefault(); dz.classList.add('over'); });
dz.addEventListener('dragleave', () => dz.classList.remove('over'));
dz.addEventListener('drop', async (e) => {
  e.preventDefault();
  dz.classList.remove('over');
  if (app.pending.size) return;
  openFiles(await filesFromDrop(e.dataTransfer));
});
dz.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('files').click(); } });
$('cancel').addEventListener('click', () => { if (app.story.running) app.story.cancelled = true; worker.postMessage({ cmd: 'cancel' }); });
// ?test-faults lets the end-to-end tests make the worker (or a helper) trap or hang mid-job
if (new URLSearchParams(location.search).has('test-faults')) {
  window.slcTestFault = (kind, helper = false) => worker.postMessage({ cmd: 'test_fault', kind, helper });
}
$('compress').addEventListener('click', compress);
$('story').addEventListener('click', tellStory);
$('report').addEventListener('click', downloadReport);
$('sweep').addEventListener('click', runSweep);
$('sensitivity').addEventListener('click', measureSensitivity);
// keys for the main actions (not while typing in a field, Escape always)
const KEYS = { d: 'load-demo', c: 'compress', s: 'story', g: 'generate', e: 'export', r: 'report', l: 'large-type' };
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === 'Escape') { if (!$('cancel').disabled) $('cancel').click(); return; }
  if (e.target.closest && e.target.closest('input, textarea, select, [contenteditable]')) return;
  const id = KEYS[e.key.toLowerCase()];
  if (!id || $(id).disabled) return;
  e.preventDefault();
  $(id).click();
  $(id).focus();
});
$('generate').addEventListener('click', generate);
$('export').addEventListener('click', exportCheckpoint);
$('preset').addEventListener('change', (e) => applyPreset(e.target.value));
for (const id of ['method', 'rank', 'quant', 'min-dim', 'skip', 'rank-for', 'energy', 'budget', 'budget-mode', 'guard', 'allocation-check', 'refine-steps', 'target-metric', 'target-value', 'target-tolerance']) {
  $(id).addEventListener('input', () => { $('preset').value = 'custom'; updatePreview(); });
}
$('calibration-tokens').addEventListener('input', updatePreview);
$('large-type').addEventListener('click', (e) => {
  const on = document.documentElement.classList.toggle('large');
  e.currentTarget.setAttribute('aria-pressed', String(on));
});
// ?memory=BYTES plans for less heap than wasm32's 4 GiB (to try what happens with a model too large to run)
const MEMORY = Number(new URLSearchParams(location.search).get('memory'));
if (MEMORY > 0) run({ cmd: 'memory_limit', bytes: MEMORY }, () => setState('idle', `memory limited to ${fmtBytes(MEMORY)}`));
applyPreset('default');
// a link made by settingLink(): the same setting again, on the demo model when it names it
const LINKED = new URLSearchParams(location.hash.slice(1));
if ([...LINKED.keys()].length) {
  const values = Object.fromEntries(LINKED);
  setFormFields(values);
  if (values.model === 'demo') {
    app.afterOpen = () => setFormFields(values);
    const start = () => open({ demo: true }, 'neo-bard-8l');
    if (app.defaults) start(); else app.onDefaults = start;
  }
}
runs.render();
drawSweep();
drawHeatmap();
plots.spectrum($('spectrum-plot'), null);
plots.errorCurve($('error-plot'), null);
setBusy(false);
