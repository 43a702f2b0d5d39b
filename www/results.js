// What a compression did: the summary cards, the per-layer table and its plots, the target search's path; a
// compression and its evaluation started and shown.
import * as plots from './plots.js';
import { $, app, fmtBytes, fmtNumber, pct, reveal, runs, setBusy, setState, showError } from './page.js';
import { send } from './jobs.js';
import { describePolicy, evalSpec, policyFromForm, saveSettingInUrl, targetFromForm } from './form.js';
import * as estimate from './estimate.js';
import { drawSweep } from './explorer.js';

// The target search's path: every budget tried, the kept one marked.
export function renderTarget(search) {
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

export function startTable(matrices) {
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

export function addLayer(l) {
  app.layers.push(l);
  $('layer-errors').querySelector('tbody').append(rowFor(l));
  const sel = $('spectrum-layer');
  if (l.singular_values || l.decision !== 'dense') {
    sel.append(new Option(l.name.replace(/^transformer\./, '').replace(/\.weight$/, ''), l.name));
    if (sel.options.length === 1) { sel.value = l.name; drawLayerPlots(); }
  }
}

export function renderLayers(list) {
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

export function sortTable() {
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

const spectra = new Map();

export async function drawLayerPlots() {
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

export function renderSummary(ev, extra = {}) {
  const values = { ...ev, ...extra };
  for (const node of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('#summary [data-metric]'))) {
    const name = node.dataset.metric;
    node.textContent = fmtNumber(name, values[name]);
    node.title = values[name] === undefined || values[name] === null ? '' : String(values[name]);
    if (name.startsWith('bytes') || name.startsWith('resident')) node.title = values[name] ? fmtBytes(values[name]) : '';
  }
  for (const node of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('#summary [data-human]'))) {
    const v = values[node.dataset.human];
    node.textContent = v ? fmtBytes(v) : '';
  }
  const cos = values.cosine;
  const card = document.querySelector('[data-metric="cosine"]').closest('.metric');
  card.classList.toggle('good', cos >= 0.99);
  card.classList.toggle('bad', cos !== null && cos !== undefined && cos < 0.9);
  const mb = (k) => (values[k] ? fmtBytes(values[k]) : '–');
  $('summary-note').textContent = ev.convention
    ? `On ${ev.text_name || 'the text'}: ${ev.convention}. Sizes: original ${mb('bytes_original')}, compressed ${mb('bytes_compressed')} of tensors; the compressed model holds ${mb('resident_bytes_compressed')} in memory (measured by the allocator).${ev.device ? ` Computed on ${ev.device}.` : ''}`
    : '';
  $('summary').dataset.device = ev.device || '';
}

export function clearSummary() {
  for (const node of document.querySelectorAll('#summary [data-metric]')) node.textContent = '–';
  for (const node of document.querySelectorAll('#summary [data-human]')) node.textContent = '';
  $('summary-note').textContent = '';
}

export function resetResults() {
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

export function compress() {
  let policy;
  let target;
  try { policy = policyFromForm(); target = targetFromForm(); } catch (err) { showError(err.message); return; }
  // a long compression (the refit's refinement, an activation-aware check) says what it will take before it starts
  const expected = app.model ? estimate.compression(app.model.summary, policy) : 0;
  const t0 = performance.now();
  compressJob(policy, target, {}, { expected }).then((r) => {
    if (expected) estimate.learn(estimate.kindOf(policy), expected, r.compress_seconds || (performance.now() - t0) / 1000);
  }, (err) => {
    if (err.lost) return; // workerLost has said what happened
    if (err.cancelled) resetResults();
    else showError(err.message);
  });
}

// One compression and its evaluation (`evalOverride` changes the evaluation's settings), its results rendered;
// resolves with the worker's result, rejects as the job does.
export async function compressJob(policy, target, evalOverride = {}, { reveal: show = true, expected = 0 } = {}) {
  saveSettingInUrl();
  resetResults();
  if (expected > 20) $('summary-note').textContent = `Compressing: expected to take about ${estimate.say(expected)} on this machine, from what it has measured so far.`;
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
    + ` (${lin.bytes_considered ? (100 * (1 - lin.bytes_after / lin.bytes_considered)).toFixed(1) : '0.0'}% smaller,`
    + ` ${lin.bits_per_param.toFixed(2)} bits per parameter);`
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
    linear: { before: lin.bytes_considered, after: lin.bytes_after, bits: lin.bits_per_param, denseBits: 8 * lin.bytes_considered / Math.max(1, lin.params_considered) },
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
