// The only file that imports the wasm package. The page posts {cmd, ...}; the worker answers with
// {type: "state" | "progress" | "layer" | "token" | "result" | "cancelled" | "error", ...}. Long jobs run step by
// step and yield between steps (a macrotask), so a {cmd: "cancel"} gets through and ends the job cleanly.
import init, { Workspace } from './pkg/semantic_llm_compressor.js';

const ready = init();
let ws = null;
let cancelled = false;
let busy = false;
let evalTextCache = null;

const post = (msg, transfer) => self.postMessage(msg, transfer || []);
const tick = () => new Promise((r) => setTimeout(r, 0));
const DEMO = new URL('./models/neo-bard-8l/', import.meta.url);
const EVAL_TEXT = new URL('./data/eval-dev.txt', import.meta.url);

class Cancelled extends Error {}
async function checkpoint() {
  await tick();
  if (cancelled) throw new Cancelled('cancelled');
}
const state = (state, message) => post({ type: 'state', state, message });
const progress = (task, done, total, label) => post({ type: 'progress', task, done, total, label });

async function demoFiles() {
  const names = ['config.json', 'tokenizer.json', 'model.safetensors'];
  const files = [];
  for (const [i, name] of names.entries()) {
    progress('download', i, names.length, name);
    const res = await fetch(new URL(name, DEMO));
    if (!res.ok) throw new Error(`demo model: ${name} could not be fetched (HTTP ${res.status})`);
    files.push(new File([await res.blob()], name));
    await checkpoint();
  }
  progress('download', names.length, names.length, 'done');
  return files;
}

async function evalText(spec) {
  if (spec.text) return spec.text;
  if (!evalTextCache) {
    const res = await fetch(EVAL_TEXT);
    if (!res.ok) throw new Error(`the built-in evaluation text could not be fetched (HTTP ${res.status})`);
    evalTextCache = await res.text();
  }
  return evalTextCache;
}

function need() {
  if (!ws) throw new Error('no model is loaded: load the demo model or drop a checkpoint first');
}

// Evaluate the original against the compressed model (or the original alone) window by window.
async function evaluate(spec) {
  state('evaluating', 'evaluating');
  const t0 = performance.now();
  const text = await evalText(spec);
  const begin = ws.eval_begin(text, spec.tokens, spec.window);
  progress('evaluate', 0, begin.windows, `window 0/${begin.windows}`);
  for (;;) {
    await checkpoint();
    const step = ws.eval_step();
    if (step === null || step === undefined) break;
    progress('evaluate', step.done, step.total, `window ${step.done}/${step.total}`);
  }
  return { ...ws.eval_report(), seconds: (performance.now() - t0) / 1000, text_name: spec.text ? 'your text' : 'eval-dev.txt (built in)' };
}

const commands = {
  async open({ files, demo, evalSpec }) {
    state('loading', 'loading');
    if (demo) files = await demoFiles();
    if (!ws) ws = new Workspace();
    progress('load', 0, 1, 'reading headers');
    const report = ws.open(files);
    await checkpoint();
    if (report.kind === 'original') {
      await checkpoint();
      report.loaded = ws.load((done, total, name) => progress('load', done, total, name));
    } else if (report.matches_original && evalSpec) {
      report.layers_reports = ws.layer_reports();
      report.evaluation = await evaluate(evalSpec);
    } else {
      report.layers_reports = ws.layer_reports();
    }
    report.memory = ws.memory();
    return report;
  },

  async compress({ policy, evalSpec }) {
    need();
    state('compressing', 'compressing');
    const t0 = performance.now();
    const begin = ws.compress_begin(policy);
    post({ type: 'plan', ...begin });
    let done = 0;
    for (;;) {
      await checkpoint();
      const step = ws.compress_step();
      if (step === null || step === undefined) break;
      done += 1;
      progress('compress', done, begin.total_steps, `${step.phase}: ${step.name}`);
      if (step.layer) post({ type: 'layer', layer: step.layer });
    }
    const finished = ws.compress_finish();
    const compressSeconds = (performance.now() - t0) / 1000;
    const evaluation = evalSpec ? await evaluate(evalSpec) : null;
    return { finished, evaluation, compress_seconds: compressSeconds, memory: ws.memory() };
  },

  async evaluate({ evalSpec }) {
    need();
    return evaluate(evalSpec);
  },

  // Original and compressed continuations, a token of each in turn, each timed on its own.
  async generate({ prompt, params, which }) {
    need();
    state('generating', 'generating');
    const models = which || ['original', 'compressed'];
    const run = {};
    for (const m of models) {
      ws.generate_start(m, prompt, params);
      run[m] = { n: 0, spent: 0, first: 0, active: true };
    }
    for (;;) {
      await checkpoint();
      let any = false;
      for (const m of models) {
        const r = run[m];
        if (!r.active) continue;
        const t = performance.now();
        const step = ws.generate_next(m);
        const dt = performance.now() - t;
        if (step === null || step === undefined) { r.active = false; continue; }
        any = true;
        r.n += 1;
        if (r.n === 1) r.first = dt; else r.spent += dt;
        // decode rate: tokens after the first, which also reads the prompt
        const rate = r.n > 1 ? (r.n - 1) / (r.spent / 1000) : 0;
        post({ type: 'token', which: m, id: step.id, text: step.text, token: step.token, n: r.n, tokens_per_s: rate });
        const total = params && params.max_new_tokens ? params.max_new_tokens : 30;
        progress('generate', Math.max(...models.map((k) => run[k].n)), total, `${m} token ${r.n}`);
        if (step.done) r.active = false;
      }
      if (!any) break;
    }
    const out = {};
    for (const m of models) out[m] = { tokens: run[m].n, tokens_per_s: run[m].n > 1 ? (run[m].n - 1) / (run[m].spent / 1000) : 0 };
    return out;
  },

  async export({ name }) {
    need();
    const parts = ws.export();
    return { blob: new Blob(parts, { type: 'application/octet-stream' }), name };
  },

  async spectrum({ name }) {
    need();
    return { name, values: Array.from(ws.spectrum(name)) };
  },
};

self.onmessage = async (e) => {
  const { cmd, ...args } = e.data;
  if (cmd === 'cancel') {
    cancelled = busy;
    return;
  }
  await ready;
  const run = commands[cmd];
  if (!run) {
    post({ type: 'error', cmd, message: `unknown command ${cmd}` });
    return;
  }
  busy = true;
  cancelled = false;
  try {
    const result = await run(args);
    post({ type: 'result', cmd, result });
  } catch (err) {
    if (err instanceof Cancelled) post({ type: 'cancelled', cmd });
    else post({ type: 'error', cmd, message: err && err.message ? err.message : String(err) });
  } finally {
    busy = false;
    cancelled = false;
  }
};
ready.then(() => state('idle', 'ready for a model'), (err) => post({ type: 'error', cmd: 'init', message: `the WebAssembly module could not be loaded: ${err.message || err}` }));
