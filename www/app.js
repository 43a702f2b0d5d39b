// The page's main thread, wiring only: each feature lives in its own module (page, jobs, form, results, generation,
// story, explorer, opening, exporting); this file connects their buttons, keys and the worker's streamed events. All
// model work runs in the worker; nothing here computes more than a table row.
import * as plots from './plots.js';
import { $, app, fmtBytes, MEMORY, runs, setBusy, setState } from './page.js';
import { on, postToWorker, run } from './jobs.js';
import { applyPreset, setFormFields, updatePreview } from './form.js';
import { drawHeatmap, drawSweep, measureSensitivity, runSweep } from './explorer.js';
import { addLayer, compress, drawLayerPlots, renderTarget, sortTable, startTable } from './results.js';
import { addToken, generate } from './generation.js';
import { tellStory } from './story.js';
import { filesFromDrop, open, openFiles } from './opening.js';
import { downloadReport, exportCheckpoint } from './exporting.js';

// ---------- what the worker streams, to the feature that shows it ----------
on('plan', (m) => startTable(m.matrices));
on('layer', (m) => addLayer(m.layer));
on('target', (m) => renderTarget(m.search));
on('token', addToken);
on('device', (m) => {
  const d = $('device');
  d.textContent = m.label;
  d.dataset.gpu = String(m.gpu);
  d.title = m.why ? `${m.label}: ${m.why}` : m.label;
  app.device = m.label;
});
on('point', (m) => { app.sweepPoints[m.index] = m.point; drawSweep(); });
on('row', (m) => { app.sensRows.push(m.row); drawHeatmap(); });

// ---------- the model ----------
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

// ---------- the policy form ----------
$('preset').addEventListener('change', (e) => applyPreset(e.target.value));
for (const id of ['method', 'rank', 'quant', 'bits', 'group', 'min-dim', 'skip', 'rank-for', 'energy', 'budget', 'budget-unit', 'budget-mode', 'guard', 'allocation-check', 'refine-steps', 'target-metric', 'target-value', 'target-tolerance']) {
  $(id).addEventListener('input', () => { $('preset').value = 'custom'; updatePreview(); });
}
$('calibration-tokens').addEventListener('input', updatePreview);

// ---------- results ----------
for (const th of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('#layer-errors th'))) {
  th.querySelector('button').addEventListener('click', () => {
    app.sort = { key: th.dataset.key, dir: app.sort.key === th.dataset.key ? -app.sort.dir : 1 };
    sortTable();
  });
}
$('spectrum-layer').addEventListener('change', drawLayerPlots);
$('sweep-metric').addEventListener('change', drawSweep);

// ---------- actions ----------
$('compress').addEventListener('click', compress);
$('story').addEventListener('click', tellStory);
$('generate').addEventListener('click', generate);
$('export').addEventListener('click', exportCheckpoint);
$('report').addEventListener('click', downloadReport);
$('sweep').addEventListener('click', runSweep);
$('sensitivity').addEventListener('click', measureSensitivity);
$('cancel').addEventListener('click', () => { if (app.story.running) app.story.cancelled = true; postToWorker({ cmd: 'cancel' }); });
$('large-type').addEventListener('click', (e) => {
  const on = document.documentElement.classList.toggle('large');
  e.currentTarget.setAttribute('aria-pressed', String(on));
});
// ?test-faults lets the end-to-end tests make the worker (or a helper) trap or hang mid-job
if (new URLSearchParams(location.search).has('test-faults')) {
  /** @type {any} */ (window).slcTestFault = (kind, helper = false) => postToWorker({ cmd: 'test_fault', kind, helper });
}

// keys for the main actions (not while typing in a field, Escape always)
const KEYS = { d: 'load-demo', c: 'compress', s: 'story', g: 'generate', e: 'export', r: 'report', l: 'large-type' };
document.addEventListener('keydown', (/** @type {KeyboardEvent & {target: HTMLElement}} */ e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === 'Escape') { if (!$('cancel').disabled) $('cancel').click(); return; }
  if (e.target.closest && e.target.closest('input, textarea, select, [contenteditable]')) return;
  const id = KEYS[e.key.toLowerCase()];
  if (!id || $(id).disabled) return;
  e.preventDefault();
  $(id).click();
  $(id).focus();
});

// ---------- start ----------
// ?memory=BYTES plans for less heap than wasm32's 4 GiB (to try what happens with a model too large to run)
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
