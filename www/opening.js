// Opening a model: the demo, dropped folders or chosen files, or a compressed checkpoint exported here; what was
// found, described.
import { $, app, fmtBytes, runs, setBusy, setState } from './page.js';
import { ask, run } from './jobs.js';
import * as estimate from './estimate.js';
import { applyPreset, describePolicy, evalSpec, labelPresets, updatePreview } from './form.js';
import { drawHeatmap, drawSweep } from './explorer.js';
import { clearSummary, renderLayers, renderSummary, resetResults } from './results.js';

function describeModel(report) {
  const s = report.summary;
  const facts = [
    ['model', `${s.model_type}${s.compressed ? ' (compressed checkpoint)' : ''}`],
    ['layers', `${s.num_layers} (${s.attention.join(', ')})`],
    ['sizes', `hidden ${s.hidden_size}, ${s.num_heads} heads, MLP ${s.intermediate_size}, vocab ${s.vocab_size}, window ${s.window_size}`],
    ['parameters', `${(s.parameters / 1e6).toFixed(2)} M`],
    ['dtype', Object.entries(s.dtypes).map(([d, n]) => `${d} ×${n}`).join(', ')],
    ['files', `${s.files.join(', ')} — ${fmtBytes(s.file_bytes)}`],
    ['head', s.tied_head ? `tied to the token embedding${s.head_copy ? ' (lm_head.weight was saved as a copy of it: stored once)' : ''}` : 'untied head (lm_head.weight)'],
  ];
  if (s.tokenizer_source) facts.push(['tokenizer', s.tokenizer_source]);
  if (report.ignored && report.ignored.length) facts.push(['ignored', `${report.ignored.length} file${report.ignored.length > 1 ? 's' : ''} not read: ${report.ignored.join(', ')}`]);
  if (report.summary.compressed && report.policy) facts.push(['policy', describePolicy(report.policy)]);
  if (report.load_error) facts.push(['not loaded', report.load_error]);
  const held = { 'f32': ' (f32)', 'as-stored': ' (f16/bf16 kept as stored: f32 would not fit)', 'f16': ' (converted to f16: f32 would not fit)' };
  if (report.loaded) facts.push(['in memory', `${fmtBytes(report.loaded.resident_bytes)} measured${held[report.loaded.precision]}`]);
  // what cannot run here is said where the generate button is, before anyone presses it
  $('gen-limit').hidden = !report.load_error;
  $('gen-limit').textContent = report.load_error
    ? `Only the compressed model can generate here: the original does not fit in this tab (${report.load_error}).`
    : '';
  const dl = $('model-info');
  dl.replaceChildren();
  for (const [k, v] of facts) {
    dl.append(Object.assign(document.createElement('dt'), { textContent: k }), Object.assign(document.createElement('dd'), { textContent: v }));
  }
  for (const miss of report.missing) {
    dl.append(Object.assign(document.createElement('dt'), { textContent: 'missing' }), Object.assign(document.createElement('dd'), { textContent: miss, className: 'missing' }));
  }
}

export function open(msg, name) {
  run({ cmd: 'open', evalSpec: evalSpec(), ...msg }, (report) => {
    if (report.kind === 'original') {
      // the worker's speed, once: what the estimates of long jobs start from
      if (!estimate.hasSpeed()) ask({ cmd: 'speed' }).then(estimate.setSpeed, () => {});
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

// files dropped as folders are walked with the entries API
export async function filesFromDrop(dt) {
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dt.files];
  const out = [];
  const walk = async (entry, depth) => {
    if (entry.isFile) out.push(await new Promise((res, rej) => entry.file(res, rej)));
    // a dropped folder's hidden folders (.git, .cache) hold nothing of the model: not walked
    else if (entry.isDirectory && !(depth > 0 && entry.name.startsWith('.'))) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, depth + 1);
      }
    }
  };
  for (const e of entries) await walk(e, 0);
  return out;
}

// a name for exported files: the demo's, the folder's, or the checkpoint file's
function nameFrom(files) {
  const folder = files.find((f) => f.webkitRelativePath)?.webkitRelativePath.split('/')[0];
  const weights = files.find((f) => /\.(safetensors|bin)$/.test(f.name))?.name.replace(/\.(safetensors|bin)$/, '');
  return folder || (weights && weights !== 'model' ? weights : 'model');
}

export function openFiles(files) {
  // a chosen folder's files inside its hidden folders (.git, .cache) are not the model's
  files = files.filter((f) => !(f.webkitRelativePath || '').split('/').slice(1, -1).some((d) => d.startsWith('.')));
  if (!files.length) return;
  const name = nameFrom(files);
  open({ files }, name);
}
