// The coordinating worker, the one the page starts: it runs the page's commands (protocol.js) on its own Workspace
// and shares what can be shared with helper workers (team.js): an evaluation's windows, a compression's matrices, a
// sweep's points, a sensitivity table's parts. It is the one instance whose results reach the page.
import { calibrated, errorEvent, isMemoryError, recipePolicy } from './protocol.js';
import {
  Cancelled, checkpoint, default_policy, heapBytes, instance, measure_speed, need, post, progress, ready, serve, state,
  Workspace,
} from './instance.js';
import { attachGpu, deviceLabel, findGpu, gpuNextToken, onGpu, prepareGpu, withGpu } from './gpu.js';
import {
  compressionTeam, exportedFile, held, HELPER_MODEL_LIMIT, holdModels, loadOriginal, originalTeam, partOnHelper,
  readyHelpers, shareQueue, tellHelpers,
} from './team.js';

let evalTextCache = null;
const DEMO = new URL('./models/neo-bard-8l/', import.meta.url);
const EVAL_TEXT = new URL('./data/eval-dev.txt', import.meta.url);

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

// Evaluate the original against the compressed model (or the original alone), window by window, in this worker
// and its helpers.
async function evaluate(spec) {
  state('evaluating', 'evaluating');
  const t0 = performance.now();
  const text = await evalText(spec);
  if (onGpu()) return withGpu(() => evaluateOnGpu(spec, text, t0));
  const team = (spec.workers === 1 ? [] : await readyHelpers()).slice(0, Math.max(0, (spec.workers || Infinity) - 1));
  const parts = 1 + team.length;
  const skip = spec.skip || 0;
  const begin = instance.ws.eval_begin({ text, skip, tokens: spec.tokens, window: spec.window, part: 0, parts });
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
  }, holdModels);
  const partials = team.map((h, i) => evalPart(h, i));
  try {
    for (;;) {
      await checkpoint();
      const step = instance.ws.eval_step();
      if (step === null || step === undefined) break;
      done[0] = step.done;
      report();
    }
    for (const p of await Promise.all(partials)) instance.ws.eval_merge(p);
  } catch (err) {
    for (const h of team) h.w.postMessage({ cmd: 'cancel' });
    await Promise.allSettled(partials);
    throw err;
  }
  return { ...instance.ws.eval_report(), seconds: (performance.now() - t0) / 1000, workers: parts, helpers_replaced: held.replaced, text_name: spec.text ? 'your text' : 'eval-dev.txt (built in)', device: deviceLabel(parts) };
}

// The same evaluation on the GPU, window by window: each window's figures computed there, 13 numbers a position
// read back.
async function evaluateOnGpu(spec, text, t0) {
  await prepareGpu();
  const begin = instance.ws.gpu_eval_begin({ text, skip: spec.skip || 0, tokens: spec.tokens, window: spec.window, part: 0, parts: 1 });
  progress('evaluate', 0, begin.all_steps, `window 0/${begin.all_steps} (GPU)`);
  for (;;) {
    await checkpoint();
    const work = instance.ws.gpu_eval_submit();
    if (!work) break;
    const step = instance.ws.gpu_eval_accept(await work.wait());
    progress('evaluate', step.done, begin.all_steps, `window ${step.done}/${begin.all_steps} (GPU)`);
  }
  return { ...instance.ws.eval_report(), seconds: (performance.now() - t0) / 1000, workers: 1, helpers_replaced: 0, text_name: spec.text ? 'your text' : 'eval-dev.txt (built in)', device: deviceLabel(1) };
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

// The work of a compression's phase that helpers can do (a spectrum, the allocation check's candidates, a matrix's
// factors: `share.todo`), taken from one queue; this worker keeps the results. Each helper's largest heap is noted.
async function workOnTeam(team, share, total, counted, heaps) {
  await shareQueue(team, share.todo.length, {
    call: async (h, i) => {
      const bytes = instance.ws.compress_work_out(share.todo[i]);
      return h.call({ cmd: 'h_work', bytes }, [bytes.buffer]);
    },
    prepare: (h) => h.call({ cmd: 'h_open', original: held.originalFiles, reuse: false }),
    accept: (_, got, k) => {
      heaps[k] = Math.max(heaps[k] || 0, got.heap);
      const step = instance.ws.compress_accept(got.bytes);
      progress('compress', counted(), total, `${step.phase}: ${step.name} (${team.length} workers)`);
      if (step.layer) post({ type: 'layer', layer: step.layer });
    },
  });
}

// One compression with `policy`, its matrices shared among helpers where it can be; the compressed model replaces
// the last one.
async function compressOnce(policy, calibration, evalSpec) {
  state('compressing', 'compressing');
  const begin = instance.ws.compress_begin(policy, calibration);
  post({ type: 'plan', ...begin });
  // the matrices the compression before made the same way are taken already: they count as done
  let done = begin.matrices.length - begin.todo.length;
  const counted = () => ++done;
  // helpers take the phases' shareable work (spectra, the allocation check, factors) as it comes; this worker the
  // rest (calibration, probes, the refit, the check's measurement) and everything when there are none
  let team = null;
  const helperHeaps = [];
  for (;;) {
    await checkpoint();
    const share = instance.ws.compress_shareable();
    if (share && team === null) team = await compressionTeam(evalSpec && evalSpec.workers);
    if (share && team.length) {
      await workOnTeam(team, share, begin.total_steps, counted, helperHeaps);
      continue;
    }
    const step = instance.ws.compress_step();
    if (step === null || step === undefined) break;
    progress('compress', counted(), begin.total_steps, `${step.phase}: ${step.name}`);
    if (step.layer) post({ type: 'layer', layer: step.layer });
  }
  const finished = instance.ws.compress_finish();
  const workers = { count: Math.max(1, team ? team.length : 0), heaps: [await heapBytes(), ...helperHeaps] };
  held.compressedFile = () => new File(instance.ws.export(), 'compressed.safetensors');
  held.generation += 1;
  return { begin, finished, workers };
}

// Original and compressed continuations, a token of each in turn, each timed on its own; `next(which)` gives a
// model's next token (on the CPU or the GPU) or null.
/** @param {Omit<import('./protocol.js').GenerateCommand, 'cmd'>} c @param {(which: string) => Promise<any>} next */
async function generate({ prompt, params, which }, next) {
  state('generating', 'generating');
  const models = which || ['original', 'compressed'];
  const run = {};
  for (const m of models) {
    instance.ws.generate_start(m, prompt, params);
    run[m] = { n: 0, spent: 0, first: 0, active: true };
  }
  for (;;) {
    await checkpoint();
    let any = false;
    for (const m of models) {
      const r = run[m];
      if (!r.active) continue;
      const t = performance.now();
      const step = await next(m);
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
  out.device = deviceLabel(1);
  return out;
}


const commands = {
  /** @param {Omit<import('./protocol.js').OpenCommand, 'cmd'>} c */
  async open({ files, demo, evalSpec }) {
    state('loading', 'loading');
    if (demo) files = await demoFiles();
    if (!instance.ws) {
      instance.ws = new Workspace();
      await attachGpu();
    }
    progress('load', 0, 1, 'reading headers');
    const report = instance.ws.open(files);
    await checkpoint();
    if (report.kind === 'original') {
      held.originalFiles = files;
      held.compressedFile = null;
      held.generation += 1;
      held.originalGeneration += 1;
      await checkpoint();
      try {
        report.loaded = instance.ws.load((done, total, name) => progress('load', done, total, name));
      } catch (err) {
        // too large to run here: it can still be compressed and exported
        if (!isMemoryError(err)) throw err;
        report.loaded = null;
        report.load_error = err.message;
      }
      held.lastLoaded = report.loaded;
    } else if (report.matches_original && evalSpec) {
      held.compressedFile = files[0];
      held.generation += 1;
      report.layers_reports = instance.ws.layer_reports();
      const { evaluation, evalError } = await evaluateIfItFits(evalSpec);
      report.evaluation = evaluation;
      report.eval_error = evalError;
    } else {
      if (!report.matches_original) held.originalFiles = null;
      held.compressedFile = null;
      held.generation += 1;
      report.layers_reports = instance.ws.layer_reports();
    }
    report.memory = instance.ws.memory();
    return report;
  },

  // A compression (with `target`: the smallest budget meeting it on the calibration text, searched one
  // compression at a time), then its evaluation after the calibration tokens.
  /** @param {Omit<import('./protocol.js').CompressCommand, 'cmd'>} c */
  async compress({ policy, evalSpec, target }) {
    need();
    state('compressing', 'compressing');
    const t0 = performance.now();
    // the activation-aware method calibrates on the evaluation text's first tokens; the evaluation skips them
    const calibration = calibrated(policy.method) ? await evalText(evalSpec || {}) : undefined;
    let run;
    let search = null;
    if (target) {
      search = instance.ws.target_begin(policy, target);
      let last = null;
      while (search.next_budget !== null && search.next_budget !== undefined) {
        last = search.next_budget;
        post({ type: 'target', search });
        run = await compressOnce({ ...policy, budget: last }, calibration, evalSpec);
        const split = search.split;
        await evaluate({ ...(evalSpec || {}), skip: 0, tokens: split.tokens, window: split.window });
        search = instance.ws.target_record();
      }
      post({ type: 'target', search });
      // the last candidate is not always the smallest that met the target
      if (last !== search.best) run = await compressOnce({ ...policy, budget: search.best }, calibration, evalSpec);
    } else {
      run = await compressOnce(policy, calibration, evalSpec);
    }
    const compressSeconds = (performance.now() - t0) / 1000;
    // a calibrated model is never measured on its calibration text: from the calibration's end, or later if asked
    if (evalSpec && run.begin.calibration_tokens) evalSpec = { ...evalSpec, skip: Math.max(evalSpec.skip || 0, run.begin.calibration_tokens) };
    const { evaluation, evalError } = evalSpec ? await evaluateIfItFits(evalSpec) : { evaluation: null };
    // the page keeps the checkpoint, so that a new worker can take it over if this one dies (not for models
    // too large to hold twice: their compression would be lost with the worker, and the page says so)
    const checkpoint = held.lastLoaded && held.lastLoaded.bytes <= HELPER_MODEL_LIMIT ? exportedFile() : null;
    return {
      finished: run.finished, evaluation, eval_error: evalError, compress_seconds: compressSeconds,
      workers: run.workers, memory: instance.ws.memory(), target: search, layers: instance.ws.layer_reports(), checkpoint,
      helpers_replaced: held.replaced,
    };
  },

  /** @param {Omit<import('./protocol.js').MemoryLimitCommand, 'cmd'>} c */
  async memory_limit({ bytes }) {
    if (!instance.ws) {
      instance.ws = new Workspace();
      await attachGpu();
    }
    instance.ws.set_memory_limit(bytes);
    return true;
  },

  /** @param {Omit<import('./protocol.js').EvaluateCommand, 'cmd'>} c */
  async evaluate({ evalSpec }) {
    need();
    return evaluate(evalSpec);
  },

  // Original and compressed continuations, a token of each in turn, each timed on its own.
  /** @param {Omit<import('./protocol.js').GenerateCommand, 'cmd'>} c */
  async generate(c) {
    need();
    if (!onGpu()) return generate(c, async (m) => instance.ws.generate_next(m));
    return withGpu(async () => {
      await prepareGpu();
      return generate(c, gpuNextToken);
    });
  },

  /** @param {Omit<import('./protocol.js').ExportCommand, 'cmd'>} c */
  async export({ name }) {
    need();
    const file = exportedFile();
    return { blob: file || new Blob(instance.ws.export(), { type: 'application/octet-stream' }), name };
  },

  // A new worker taking over from one that died: the original opened and loaded again and, when there was one, the
  // compressed checkpoint the page kept (no evaluation: the page still shows the old one's).
  /** @param {Omit<import('./protocol.js').RestoreCommand, 'cmd'>} c */
  async restore({ files, demo, checkpoint, memoryLimit }) {
    if (memoryLimit) await commands.memory_limit({ bytes: memoryLimit });
    const original = await commands.open({ files, demo });
    let compressed = null;
    if (checkpoint) {
      state('loading', 'loading the compressed model again');
      compressed = instance.ws.open([checkpoint]);
      held.compressedFile = checkpoint;
      held.generation += 1;
    }
    return { original, compressed };
  },

  // The explorer's sweep: every recipe at every budget (a size the shapes fix once), each compressed and measured on `evalTokens`
  // tokens after the calibration text; points shared among helpers that hold the original, streamed as "point" events.
  /** @param {Omit<import('./protocol.js').SweepCommand, 'cmd'>} c */
  async sweep({ recipes, budgets, base, evalTokens, evalSpec }) {
    need();
    state('exploring', 'sweeping');
    const t0 = performance.now();
    const text = await evalText(evalSpec || {});
    const items = [];
    for (const recipe of recipes) for (const b of recipePolicy(recipe).fixed ? budgets.slice(0, 1) : budgets) items.push({ recipe, budget: b });
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
        accept(i, instance.ws.sweep(specOf(i))[0]);
      }
    }
    return { points, seconds: (performance.now() - t0) / 1000, workers: Math.max(1, team.length), helpers_replaced: held.replaced };
  },

  // The explorer's sensitivity table: every block matrix compressed alone with `policy`, measured on the first
  // `sensitivity_tokens` of the text; parts shared among helpers that hold the original, rows streamed as "row"
  // events.
  /** @param {Omit<import('./protocol.js').SensitivityCommand, 'cmd'>} c */
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
      totals[0] = instance.ws.sensitivity_begin(policy, text, 0, 1);
      for (;;) {
        await checkpoint();
        const row = instance.ws.sensitivity_step();
        if (row === null || row === undefined) break;
        done[0] += 1;
        keep(row);
        report(row.name);
      }
    }
    return { rows, seconds: (performance.now() - t0) / 1000, workers: parts, helpers_replaced: held.replaced };
  },

  /** @param {Omit<import('./protocol.js').SpectrumCommand, 'cmd'>} c */
  async spectrum({ name }) {
    need();
    return { name, values: Array.from(instance.ws.spectrum(name)) };
  },
};

const DOING = { open: 'opened the model', restore: 'reloaded the model', compress: 'compressed the model',
  evaluate: 'evaluated', generate: 'generated text', export: 'exported the compressed checkpoint',
  spectrum: 'computed a spectrum', memory_limit: 'set the memory limit', sweep: 'ran a sweep',
  sensitivity: 'measured sensitivity' };

serve(commands, {
  doing: DOING,
  onStart: () => { held.replaced = 0; },
  onCancel: () => tellHelpers({ cmd: 'cancel' }),
  onFault: ({ kind, helper }) => {
    if (helper) tellHelpers({ cmd: 'test_fault', kind });
    return !!helper;
  },
  quick: { preview: ({ policy }) => (instance.ws ? instance.ws.preview(policy) : null), speed: () => measure_speed() },
});
ready.then(async () => { post({ type: 'defaults', policy: default_policy() }); await findGpu(); state('idle', 'ready for a model'); }, (err) => post(errorEvent('init', new Error(`the WebAssembly module could not be loaded: ${err.message || err}`))));
