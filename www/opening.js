// Opening a model: the demo, dropped folders or chosen files, or a compressed checkpoint exported here; what was
// found, described.
import { $, app, fmtBytes, runs, setBusy, setState } from './page.js';
import { run } from './jobs.js';
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

export function open(msg, name) {
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

// files dropped as folders are walked with the entries API
export async function filesFromDrop(dt) {
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

// a name for exported files: the demo's, the folder's, or the checkpoint file's
function nameFrom(files) {
  const folder = files.find((f) => f.webkitRelativePath)?.webkitRelativePath.split('/')[0];
  const weights = files.find((f) => f.name.endsWith('.safetensors'))?.name.replace(/\.safetensors$/, '');
  return folder || (weights && weights !== 'model' ? weights : 'model');
}

export function openFiles(files) {
  if (!files.length) return;
  const name = nameFrom(files);
  open({ files }, name);
}
