// The only file that imports the wasm package. The page posts {cmd, ...}; the worker answers with
// {type: "state"|"progress"|"token"|"result"|"error", ...}. Long jobs run step by step and yield between
// steps, so a {cmd: "cancel"} gets through and ends the job cleanly.
import init, { Workspace } from './pkg/semantic_llm_compressor.js';

const ready = init();
let ws = null;
let cancelled = false;
let busy = false;

const post = (msg) => self.postMessage(msg);
const tick = () => new Promise((r) => setTimeout(r, 0));
const DEMO = new URL('./models/neo-bard-8l/', import.meta.url);

class Cancelled extends Error {}
async function checkpoint() {
  await tick();
  if (cancelled) throw new Cancelled('cancelled');
}

async function demoFiles() {
  const names = ['config.json', 'tokenizer.json', 'model.safetensors'];
  const files = [];
  for (const [i, name] of names.entries()) {
    post({ type: 'progress', task: 'download', done: i, total: names.length, label: name });
    const res = await fetch(new URL(name, DEMO));
    if (!res.ok) throw new Error(`demo model: ${name} could not be fetched (HTTP ${res.status})`);
    files.push(new File([await res.blob()], name));
  }
  return files;
}

const commands = {
  async open({ files, demo }) {
    if (demo) files = await demoFiles();
    ws = new Workspace();
    post({ type: 'state', state: 'loading', message: 'reading headers' });
    const report = ws.open(files);
    post({ type: 'progress', task: 'load', done: 0, total: 1, label: 'weights' });
    await checkpoint();
    const loaded = ws.load();
    post({ type: 'progress', task: 'load', done: 1, total: 1, label: 'weights' });
    return { ...report, loaded };
  },

  async generate({ which, prompt, params }) {
    need();
    const t0 = performance.now();
    ws.generate_start(which, prompt, params);
    let n = 0;
    let tFirst = 0;
    let rate = 0;
    for (;;) {
      await checkpoint();
      const step = ws.generate_next(which);
      if (step === null || step === undefined) break;
      n += 1;
      // decode rate: tokens after the first (which also pays for reading the prompt)
      if (n === 1) tFirst = performance.now();
      else rate = (n - 1) / ((performance.now() - tFirst) / 1000);
      post({ type: 'token', which, text: step.text, id: step.id, n, tokens_per_s: rate });
      if (step.done) break;
    }
    return { which, tokens: n, seconds: (performance.now() - t0) / 1000, tokens_per_s: rate };
  },
};

function need() {
  if (!ws) throw new Error('no model is loaded: load the demo model or drop a checkpoint first');
}

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
post({ type: 'state', state: 'idle' });
