// The only file that imports the wasm package. The page posts a Command; the worker answers with Events (both
// documented in protocol.js). Long jobs run step by
// step and yield between steps (a macrotask), so a {cmd: "cancel"} gets through and ends the job cleanly.
//
// The worker the page starts coordinates; for an evaluation it starts helpers — more instances of this same file,
// each with its own wasm instance — that load the same files and evaluate every n-th window; their sums are merged.
import init, { Workspace, default_policy, test_trap } from './pkg/semantic_llm_compressor.js';
import { errorEvent, errorFrom, isMemoryError, isFatal, HEARTBEAT_MS } from './protocol.js';

const ready = init();
let ws = null;
let cancelled = false;
let busy = false;
let evalTextCache = null;
// what the helpers must hold: the original's files, and the compressed model as a file
let originalFiles = null;
// the compressed model as a File, or a function that exports it when a helper first needs it
let compressedFile = null;
let generation = 0; // bumps when either changes
let originalGeneration = 0; // bumps when the original changes
const HELPERS = Math.max(0, Math.min(3, (self.navigator.hardwareConcurrency || 1) - 1));
// a compression shares its matrices among this many helpers (one per core; this worker only coordinates)
const COMPRESS_HELPERS = Math.min(4, self.navigator.hardwareConcurrency || 1);
// models above this size (f32 bytes) are evaluated in one worker: each helper holds its own copy
const HELPER_MODEL_LIMIT = 1.2e9;
const helpers = [];
// helpers that died during the running job and were replaced (their work redone), reported with its result
let replaced = 0;

const post = (msg, transfer) => self.postMessage(msg, transfer || []);
const tick = () => new Promise((r) => setTimeout(r, 0));
const DEMO = new URL('./models/neo-bard-8l/', import.meta.url);
const EVAL_TEXT = new URL('./data/eval-dev.txt', import.meta.url);

class Cancelled extends Error {}
// what this instance is doing, for the sentence the page shows if it dies
let doing = 'starting';
// a fault the end-to-end tests ask for ({cmd: 'test_fault'}): it strikes at the next step of the running job
let fault = null;
function faultPoint() {
  if (!fault) return;
  const kind = fault;
  fault = null;
  if (kind === 'trap') test_trap(doing);
  if (kind === 'hang') for (;;) { /* never answers again: only the missing heartbeat tells */ }
}
async function checkpoint() {
  await tick();
  faultPoint();
  if (cancelled) throw new Cancelled('cancelled');
}
// A heartbeat with this instance's wasm memory, so whoever started it can tell a busy worker from a dead one and say
// how much memory it held. A wasm step runs to its end before the next beat, so a beat may be late by one step.
setInterval(async () => post({ type: 'alive', heap: await heapBytes(), doing }), HEARTBEAT_MS);
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

// A helper: one more instance of this file. call() sends a command and resolves with its result; progress
// messages go to onProgress. A helper that traps, fails to start or stops beating is dead: it is terminated, its call
// is rejected with an error marked `helperDied` that says so, and the job replaces it (a matrix back in the queue,
// an evaluation part redone).
function startHelper() {
  const w = new Worker(new URL(import.meta.url), { type: 'module' });
  const h = { w, generation: -1, originalGen: -1, pending: null, onProgress: null, alive: true, beat: performance.now(), heap: 0 };
  const die = (why) => {
    if (!h.alive) return;
    h.alive = false;
    w.terminate();
    const i = helpers.indexOf(h);
    if (i >= 0) helpers.splice(i, 1);
    if (h.pending) {
      const p = h.pending;
      h.pending = null;
      p.reject(Object.assign(new Error(`a helper worker died while it ${h.doing || 'worked'} (${why}; it held ${mib(h.heap)} of memory)`), { helperDied: true }));
    }
  };
  h.die = die;
  w.onmessage = (e) => {
    const m = e.data;
    h.beat = performance.now();
    if (m.type === 'alive') { h.heap = m.heap; return; }
    if (m.type === 'progress' && h.onProgress) h.onProgress(m);
    else if (m.type === 'error' && m.fatal) die(m.message);
    else if (m.type === 'result' && h.pending) { const p = h.pending; h.pending = null; p.resolve(m.result); }
    else if ((m.type === 'error' || m.type === 'cancelled') && h.pending) { const p = h.pending; h.pending = null; p.reject(m.type === 'error' ? errorFrom(m) : new Cancelled('cancelled')); }
  };
  w.onerror = (e) => { e.preventDefault(); die(e.message || 'it failed to run'); };
  w.onmessageerror = () => die('a message from it could not be read');
  h.call = (msg) => new Promise((resolve, reject) => {
    if (!h.alive) { reject(Object.assign(new Error('a helper worker is gone'), { helperDied: true })); return; }
    h.doing = describeHelperCommand(msg);
    h.beat = performance.now();
    h.pending = { resolve, reject };
    w.postMessage(msg);
  });
  return h;
}
const mib = (b) => `${Math.round((b || 0) / 2 ** 20)} MiB`;
const describeHelperCommand = (msg) => ({
  h_models: 'loaded the models', h_eval: `evaluated part ${msg.part + 1} of ${msg.parts}`,
  h_compress: 'opened the checkpoint to compress', h_factor: `factored matrix ${msg.index + 1}`,
  h_original: 'loaded the original', h_point: `compressed and measured sweep point ${msg.index + 1}`,
  h_sensitivity: `measured sensitivity part ${msg.part + 1} of ${msg.parts}`,
}[msg.cmd] || msg.cmd);
// helpers whose heartbeat stopped (a hang, or killed by the browser) are declared dead
setInterval(() => {
  const now = performance.now();
  for (const h of [...helpers]) if (h.pending && now - h.beat > watchdogMs) h.die(`no heartbeat for ${Math.round((now - h.beat) / 1000)} s`);
}, HEARTBEAT_MS);
// ?watchdog=MS on this file's URL (the page passes its own) shortens the wait for a heartbeat, for tests
const watchdogMs = Number(new URL(import.meta.url).searchParams.get('watchdog')) || 180000;

// The compressed model as a File, exported the first time it is wanted (by a helper, the page, or a new worker).
function exportedFile() {
  if (typeof compressedFile === 'function') compressedFile = compressedFile();
  return compressedFile;
}

// Bring the helpers up to date with the coordinator's models; returns the ones ready to evaluate.
async function readyHelpers(loaded) {
  if (!HELPERS || !originalFiles || !compressedFile || !loaded || loaded.bytes > HELPER_MODEL_LIMIT) return [];
  exportedFile();
  while (helpers.length < HELPERS) helpers.push(startHelper());
  const ready = [];
  await Promise.all(helpers.slice(0, HELPERS).filter((h) => h.alive).map(async (h) => {
    try {
      if (h.generation !== generation) {
        await h.call({ cmd: 'h_models', original: originalFiles, compressed: compressedFile });
        h.generation = generation;
        h.originalGen = originalGeneration;
      }
      ready.push(h);
    } catch (err) {
      h.die(err.message);
      console.warn(`evaluation helper unavailable: ${err.message}`);
    }
  }));
  return ready;
}

// Evaluate the original against the compressed model (or the original alone), window by window, in this worker
// and its helpers.
async function evaluate(spec) {
  state('evaluating', 'evaluating');
  const t0 = performance.now();
  const text = await evalText(spec);
  const team = (spec.workers === 1 ? [] : await readyHelpers(lastLoaded)).slice(0, Math.max(0, (spec.workers || Infinity) - 1));
  const parts = 1 + team.length;
  const skip = spec.skip || 0;
  const begin = ws.eval_begin({ text, skip, tokens: spec.tokens, window: spec.window, part: 0, parts });
  const done = new Array(parts).fill(0);
  const report = () => {
    const d = done.reduce((a, b) => a + b, 0);
    const how = parts > 1 ? ` (${parts} workers)` : begin.unit === 'stage' ? ' (original streamed from its file)' : '';
    progress('evaluate', d, begin.all_steps, `${begin.unit} ${d}/${begin.all_steps}${how}`);
  };
  report();
  // a helper that dies is replaced and its part redone (twice at most)
  const evalPart = (h, i) => partOnHelper(h, (h) => {
    done[i + 1] = 0;
    h.onProgress = (m) => { if (m.task === 'evaluate') { done[i + 1] = m.done; report(); } };
    return h.call({ cmd: 'h_eval', text, skip, tokens: spec.tokens, window: spec.window, part: i + 1, parts });
  }, async (h) => {
    await h.call({ cmd: 'h_models', original: originalFiles, compressed: compressedFile });
    h.generation = generation;
    h.originalGen = originalGeneration;
  });
  const partials = team.map((h, i) => evalPart(h, i));
  try {
    for (;;) {
      await checkpoint();
      const step = ws.eval_step();
      if (step === null || step === undefined) break;
      done[0] = step.done;
      report();
    }
    for (const p of await Promise.all(partials)) ws.eval_merge(p);
  } catch (err) {
    for (const h of team) h.w.postMessage({ cmd: 'cancel' });
    await Promise.allSettled(partials);
    throw err;
  }
  return { ...ws.eval_report(), seconds: (performance.now() - t0) / 1000, workers: parts, helpers_replaced: replaced, text_name: spec.text ? 'your text' : 'eval-dev.txt (built in)' };
}
let lastLoaded = null;

// Helpers that open the original's files and begin the same compression; [] when there is none to have.
async function compressionTeam(policy, workers) {
  if (COMPRESS_HELPERS < 2 || workers === 1 || !originalFiles) return [];
  while (helpers.length < COMPRESS_HELPERS) helpers.push(startHelper());
  const team = [];
  await Promise.all(helpers.slice(0, COMPRESS_HELPERS).filter((h) => h.alive).map(async (h) => {
    h.generation = -1; // it will hold the compression's files, not the evaluation's models
    h.originalGen = -1;
    try {
      await h.call({ cmd: 'h_compress', original: originalFiles, policy });
      team.push(h);
    } catch (err) {
      console.warn(`compression helper unavailable: ${err.message}`);
    }
  }));
  return team;
}

// This instance's wasm memory: what it has grown to (it never shrinks).
const heapBytes = async () => (await ready).memory.buffer.byteLength;

// Items 0..n-1 shared by the team, each helper taking the next from one queue: `call(h, i)` runs item i on helper h,
// `accept(i, result, k)` keeps what helper k returned. A helper that dies is replaced (`prepare(h)` brings the new one
// up to the team's state) and its item put back in the queue (each item is tried three times at most). Any other
// failure, or a cancel, stops the team.
async function shareQueue(team, n, { call, accept, prepare }) {
  const queue = [...Array(n).keys()];
  const tries = new Array(n).fill(0);
  let stop = false;
  const feed = async (h, k) => {
    while (queue.length && !stop) {
      if (cancelled) throw new Cancelled('cancelled');
      faultPoint();
      const index = queue.shift();
      let got;
      try {
        got = await call(h, index);
      } catch (err) {
        if (!err.helperDied || stop || ++tries[index] >= 3) throw err;
        console.warn(`${err.message}: item ${index + 1} goes back in the queue for a new helper`);
        replaced += 1;
        queue.unshift(index);
        h = startHelper();
        helpers.push(h);
        team[k] = h;
        await prepare(h);
        continue;
      }
      if (stop) return;
      accept(index, got, k);
    }
  };
  const feeds = team.map(feed);
  try {
    await Promise.all(feeds);
  } catch (err) {
    stop = true;
    for (const h of team) h.w.postMessage({ cmd: 'cancel' });
    await Promise.allSettled(feeds);
    throw err;
  }
}

// Every matrix factored by the team, whole matrices taken from one queue; this worker keeps the results. Returns the
// largest heap each helper reached.
async function factorOnTeam(team, begin, policy) {
  const heaps = team.map(() => 0);
  let done = 0;
  await shareQueue(team, begin.matrices.length, {
    call: (h, index) => h.call({ cmd: 'h_factor', index }),
    prepare: (h) => h.call({ cmd: 'h_compress', original: originalFiles, policy }),
    accept: (index, got, k) => {
      heaps[k] = Math.max(heaps[k], got.heap);
      const step = ws.compress_accept(got.bytes);
      done += 1;
      progress('compress', done, begin.total_steps, `factor: ${step.name} (${team.length} workers)`);
      if (step.layer) post({ type: 'layer', layer: step.layer });
    },
  });
  return heaps;
}

// One part of a job run by helper `h` (`call(h)`), redone by a new helper (`prepare(h)` first) if it dies, twice at
// most.
async function partOnHelper(h, call, prepare, tries = 0) {
  try {
    return await call(h);
  } catch (err) {
    if (!err.helperDied || tries >= 2 || cancelled) throw err;
    console.warn(`${err.message}: its part is redone by a new helper`);
    replaced += 1;
    const fresh = startHelper();
    helpers.push(fresh);
    await prepare(fresh);
    return partOnHelper(fresh, call, prepare, tries + 1);
  }
}

// Helpers holding the loaded original (for the explorer's sweeps and sensitivity tables); [] when the model is too
// large to hold once per helper, or there is one core.
async function originalTeam() {
  if (COMPRESS_HELPERS < 2 || !originalFiles || !lastLoaded || lastLoaded.bytes > HELPER_MODEL_LIMIT) return [];
  while (helpers.length < COMPRESS_HELPERS) helpers.push(startHelper());
  const team = [];
  await Promise.all(helpers.slice(0, COMPRESS_HELPERS).filter((h) => h.alive).map(async (h) => {
    try {
      if (h.originalGen !== originalGeneration) await loadOriginal(h);
      team.push(h);
    } catch (err) {
      console.warn(`explorer helper unavailable: ${err.message}`);
    }
  }));
  return team;
}
async function loadOriginal(h) {
  await h.call({ cmd: 'h_original', original: originalFiles });
  h.generation = -1; // it holds the original alone, not the evaluation's pair
  h.originalGen = originalGeneration;
}

// An evaluation that does not fit in memory is reported, not fatal: the compression is still there to export.
async function evaluateIfItFits(spec) {
  try {
    return { evaluation: await evaluate(spec) };
  } catch (err) {
    if (err instanceof Cancelled || !isMemoryError(err)) throw err;
    return { evaluation: null, evalError: err.message };
  }
}

// One compression with `policy`, its matrices shared among helpers where it can be; the compressed model replaces
// the last one.
async function compressOnce(policy, calibration, evalSpec) {
  state('compressing', 'compressing');
  const begin = ws.compress_begin(policy, calibration);
  post({ type: 'plan', ...begin });
  const team = begin.can_split ? await compressionTeam(policy, evalSpec && evalSpec.workers) : [];
  const helperHeaps = team.length ? await factorOnTeam(team, begin, policy) : [];
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
  const workers = { count: Math.max(1, team.length), heaps: [await heapBytes(), ...helperHeaps] };
  compressedFile = () => new File(ws.export(), 'compressed.safetensors');
  generation += 1;
  return { begin, finished, workers };
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
      originalFiles = files;
      compressedFile = null;
      generation += 1;
      originalGeneration += 1;
      await checkpoint();
      try {
        report.loaded = ws.load((done, total, name) => progress('load', done, total, name));
      } catch (err) {
        // too large to run here: it can still be compressed and exported
        if (!isMemoryError(err)) throw err;
        report.loaded = null;
        report.load_error = err.message;
      }
      lastLoaded = report.loaded;
    } else if (report.matches_original && evalSpec) {
      compressedFile = files[0];
      generation += 1;
      report.layers_reports = ws.layer_reports();
      const { evaluation, evalError } = await evaluateIfItFits(evalSpec);
      report.evaluation = evaluation;
      report.eval_error = evalError;
    } else {
      if (!report.matches_original) originalFiles = null;
      compressedFile = null;
      generation += 1;
      report.layers_reports = ws.layer_reports();
    }
    report.memory = ws.memory();
    return report;
  },

  // A compression (with `target`: the smallest budget meeting it on the calibration text, searched one
  // compression at a time), then its evaluation after the calibration tokens.
  async compress({ policy, evalSpec, target }) {
    need();
    state('compressing', 'compressing');
    const t0 = performance.now();
    // the activation-aware method calibrates on the evaluation text's first tokens; the evaluation skips them
    const calibrated = policy.method === 'whitened' || policy.method === 'refit';
    const calibration = calibrated ? await evalText(evalSpec || {}) : undefined;
    let run;
    let search = null;
    if (target) {
      search = ws.target_begin(policy, target);
      let last = null;
      while (search.next_budget !== null && search.next_budget !== undefined) {
        last = search.next_budget;
        post({ type: 'target', search });
        run = await compressOnce({ ...policy, budget: last }, calibration, evalSpec);
        const split = search.split;
        await evaluate({ ...(evalSpec || {}), skip: 0, tokens: split.tokens, window: split.window });
        search = ws.target_record();
      }
      post({ type: 'target', search });
      // the last candidate is not always the smallest that met the target
      if (last !== search.best) run = await compressOnce({ ...policy, budget: search.best }, calibration, evalSpec);
    } else {
      run = await compressOnce(policy, calibration, evalSpec);
    }
    const compressSeconds = (performance.now() - t0) / 1000;
    if (evalSpec && run.begin.calibration_tokens) evalSpec = { ...evalSpec, skip: run.begin.calibration_tokens };
    const { evaluation, evalError } = evalSpec ? await evaluateIfItFits(evalSpec) : { evaluation: null };
    // the page keeps the checkpoint, so that a new worker can take it over if this one dies (not for models
    // too large to hold twice: their compression would be lost with the worker, and the page says so)
    const checkpoint = lastLoaded && lastLoaded.bytes <= HELPER_MODEL_LIMIT ? exportedFile() : null;
    return {
      finished: run.finished, evaluation, eval_error: evalError, compress_seconds: compressSeconds,
      workers: run.workers, memory: ws.memory(), target: search, layers: ws.layer_reports(), checkpoint,
      helpers_replaced: replaced,
    };
  },

  async memory_limit({ bytes }) {
    if (!ws) ws = new Workspace();
    ws.set_memory_limit(bytes);
    return true;
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
    const file = exportedFile();
    return { blob: file || new Blob(ws.export(), { type: 'application/octet-stream' }), name };
  },

  // A new worker taking over from one that died: the original opened and loaded again and, when there was one, the
  // compressed checkpoint the page kept (no evaluation: the page still shows the old one's).
  async restore({ files, demo, checkpoint, memoryLimit }) {
    if (memoryLimit) await commands.memory_limit({ bytes: memoryLimit });
    const original = await commands.open({ files, demo });
    let compressed = null;
    if (checkpoint) {
      state('loading', 'loading the compressed model again');
      compressed = ws.open([checkpoint]);
      compressedFile = checkpoint;
      generation += 1;
    }
    return { original, compressed };
  },

  // helper side: hold the same original and compressed models as the coordinator
  async h_models({ original, compressed }) {
    ws = new Workspace();
    ws.open(original);
    ws.load();
    const r = ws.open([compressed]);
    if (!r.matches_original) throw new Error('the compressed model does not belong to the original');
    return true;
  },

  // helper side: open the original's files (nothing is loaded) and begin the coordinator's compression
  async h_compress({ original, policy }) {
    ws = new Workspace();
    ws.open(original);
    ws.compress_begin(policy, undefined);
    return true;
  },

  // helper side: factor one matrix and hand back its factors as bytes
  async h_factor({ index }) {
    faultPoint();
    const bytes = ws.compress_factor_out(index);
    return { bytes, heap: await heapBytes() };
  },

  // helper side: evaluate one part of the windows and hand back the sums
  async h_eval({ text, skip, tokens, window, part, parts }) {
    ws.eval_begin({ text, skip, tokens, window, part, parts });
    for (;;) {
      await checkpoint();
      const step = ws.eval_step();
      if (step === null || step === undefined) break;
      progress('evaluate', step.done, step.total);
    }
    return ws.eval_partial();
  },

  // The explorer's sweep: every recipe at every budget (INT8 once), each compressed and measured on `evalTokens`
  // tokens after the calibration text; points shared among helpers that hold the original, streamed as "point" events.
  async sweep({ recipes, budgets, base, evalTokens, evalSpec }) {
    need();
    state('exploring', 'sweeping');
    const t0 = performance.now();
    const text = await evalText(evalSpec || {});
    const items = [];
    for (const recipe of recipes) for (const b of recipe === 'int8' ? budgets.slice(0, 1) : budgets) items.push({ recipe, budget: b });
    const specOf = (i) => ({ text, recipes: [items[i].recipe], budgets: [items[i].budget], base, eval_tokens: evalTokens });
    const points = new Array(items.length).fill(null);
    let done = 0;
    const accept = (i, point) => {
      points[i] = point;
      done += 1;
      progress('sweep', done, items.length, `${point.recipe}${point.budget ? ` at ${point.budget}` : ''}`);
      post({ type: 'point', index: i, point });
    };
    progress('sweep', 0, items.length, 'starting the workers');
    const team = await originalTeam();
    progress('sweep', 0, items.length, `${items.length} compressions (${Math.max(1, team.length)} workers)`);
    if (team.length) {
      await shareQueue(team, items.length, {
        call: (h, i) => h.call({ cmd: 'h_point', index: i, spec: specOf(i) }),
        prepare: loadOriginal,
        accept,
      });
    } else {
      for (let i = 0; i < items.length; i++) {
        await checkpoint();
        accept(i, ws.sweep(specOf(i))[0]);
      }
    }
    return { points, seconds: (performance.now() - t0) / 1000, workers: Math.max(1, team.length), helpers_replaced: replaced };
  },

  // The explorer's sensitivity table: every block matrix compressed alone with `policy`, measured on the first
  // `sensitivity_tokens` of the text; parts shared among helpers that hold the original, rows streamed as "row"
  // events.
  async sensitivity({ policy, evalSpec }) {
    need();
    state('exploring', 'measuring sensitivity');
    const t0 = performance.now();
    const text = await evalText(evalSpec || {});
    const team = await originalTeam();
    const parts = Math.max(1, team.length);
    const done = new Array(parts).fill(0);
    const totals = new Array(parts).fill(0);
    const rows = [];
    const report = (label) => progress('sensitivity', done.reduce((a, b) => a + b, 0), Math.max(1, totals.reduce((a, b) => a + b, 0)), label);
    const keep = (row) => { rows.push(row); post({ type: 'row', row }); };
    report(`calibrating (${parts} workers)`);
    if (team.length) {
      await Promise.all(team.map((h, i) => partOnHelper(h, (h) => {
        done[i] = 0;
        h.onProgress = (m) => {
          if (m.task !== 'sensitivity') return;
          done[i] = m.done;
          totals[i] = m.total;
          if (m.row) keep(m.row);
          report(m.row ? m.row.name : m.label);
        };
        return h.call({ cmd: 'h_sensitivity', policy, text, part: i, parts });
      }, loadOriginal)));
    } else {
      totals[0] = ws.sensitivity_begin(policy, text, 0, 1);
      for (;;) {
        await checkpoint();
        const row = ws.sensitivity_step();
        if (row === null || row === undefined) break;
        done[0] += 1;
        keep(row);
        report(row.name);
      }
    }
    return { rows, seconds: (performance.now() - t0) / 1000, workers: parts, helpers_replaced: replaced };
  },

  // helper side: open and load the original alone
  async h_original({ original }) {
    ws = new Workspace();
    ws.open(original);
    ws.load();
    return true;
  },

  // helper side: one point of a sweep
  async h_point({ spec }) {
    faultPoint();
    return ws.sweep(spec)[0];
  },

  // helper side: one part of a sensitivity table, a row at a time (each row rides on its progress message)
  async h_sensitivity({ policy, text, part, parts }) {
    const total = ws.sensitivity_begin(policy, text, part, parts);
    let done = 0;
    progress('sensitivity', 0, total, 'calibrated');
    for (;;) {
      await checkpoint();
      const row = ws.sensitivity_step();
      if (row === null || row === undefined) break;
      done += 1;
      post({ type: 'progress', task: 'sensitivity', done, total, label: row.name, row });
    }
    return true;
  },

  async spectrum({ name }) {
    need();
    return { name, values: Array.from(ws.spectrum(name)) };
  },
};

const DOING = { open: 'opened the model', restore: 'reloaded the model', compress: 'compressed the model',
  evaluate: 'evaluated', generate: 'generated text', export: 'exported the compressed checkpoint',
  spectrum: 'computed a spectrum', memory_limit: 'set the memory limit', sweep: 'ran a sweep',
  sensitivity: 'measured sensitivity' };

self.onmessage = async (e) => {
  const { cmd, id, ...args } = e.data;
  if (cmd === 'cancel') {
    cancelled = busy;
    for (const h of helpers) h.w.postMessage({ cmd: 'cancel' });
    return;
  }
  if (cmd === 'test_fault') {
    // for the end-to-end tests: this instance (or its first helper) traps or hangs at the next step of its job
    if (args.helper) { for (const h of helpers) h.w.postMessage({ cmd: 'test_fault', kind: args.kind }); } else fault = args.kind;
    return;
  }
  await ready;
  if (cmd === 'preview') {
    // quick and side-effect free: answered at once, even between the steps of a running job
    try {
      post({ type: 'result', cmd, id, result: ws ? ws.preview(args.policy) : null });
    } catch (err) {
      post({ ...errorEvent(cmd, err), id });
    }
    return;
  }
  const run = commands[cmd];
  if (!run) {
    post({ ...errorEvent(cmd, new Error(`unknown command ${cmd}`)), id });
    return;
  }
  busy = true;
  cancelled = false;
  replaced = 0;
  doing = DOING[cmd] || cmd;
  try {
    const result = await run(args);
    post({ type: 'result', cmd, id, result });
  } catch (err) {
    if (err instanceof Cancelled) post({ type: 'cancelled', cmd, id });
    else if (isFatal(err)) {
      // the wasm instance trapped or ran out of memory: its state is lost and it must not be used again
      const heap = await heapBytes().catch(() => 0);
      const message = `the worker's WebAssembly instance failed while it ${doing} (${err.message || err}); it held ${mib(heap)} of memory`;
      post({ ...errorEvent(cmd, err), message, id, fatal: true, heap, doing });
      self.onmessage = null;
    } else post({ ...errorEvent(cmd, err), id });
  } finally {
    busy = false;
    cancelled = false;
  }
};
ready.then(() => { post({ type: 'defaults', policy: default_policy() }); state('idle', 'ready for a model'); }, (err) => post(errorEvent('init', new Error(`the WebAssembly module could not be loaded: ${err.message || err}`))));
