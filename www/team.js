// The coordinator's helpers: more worker instances (helper.js), each its own wasm instance, started when a job can
// share its work, kept holding the models the job needs (the coordinator's original and compressed model, or the
// original alone, or the files of a compression), given work from one queue or a part each, and replaced when they
// die (a trap, a failed start, a heartbeat that stopped): their item goes back in the queue, their part is redone.
import { errorFrom, HEARTBEAT_MS } from './protocol.js';
import { Cancelled, faultPoint, instance, mib } from './instance.js';

const cores = self.navigator.hardwareConcurrency || 1;
/** Helpers for an evaluation: one per extra core, three at most. */
export const HELPERS = Math.max(0, Math.min(3, cores - 1));
/** A compression (or a sweep, a sensitivity table) shares its work among this many helpers (one per core; the
 * coordinator only coordinates). */
export const COMPRESS_HELPERS = Math.min(4, cores);
/** Models above this size (f32 bytes) are evaluated in one worker: each helper would hold its own copy. */
export const HELPER_MODEL_LIMIT = 1.2e9;

/**
 * What the helpers must hold, as the coordinator has it: the original's files, the compressed model as a File (or a
 * function that exports it when first wanted), generations that bump when either changes, and the original as
 * loaded. `replaced` counts the helpers that died during the running job and were replaced (reported with its result).
 * @type {{originalFiles: ?File[], compressedFile: ?(File|(() => File)), generation: number, originalGeneration: number,
 *   lastLoaded: ?{bytes: number}, replaced: number}}
 */
export const held = { originalFiles: null, compressedFile: null, generation: 0, originalGeneration: 0, lastLoaded: null, replaced: 0 };

/**
 * A helper and what it holds: the compressed model of `generation` (-1: none), the original of `originalGen` (-1:
 * none), `loaded` or only opened (for a compression's reads).
 * @typedef {{w: Worker, generation: number, originalGen: number, loaded: boolean, pending: ?{resolve: Function, reject: Function},
 *   onProgress: ?((m: import('./protocol.js').ProgressEvent) => void), alive: boolean, beat: number, heap: number,
 *   doing?: string, die: (why: string) => void, call: (msg: import('./protocol.js').Command, transfer?: Transferable[]) => Promise<any>}} Helper
 */
/** @type {Helper[]} */
export const helpers = [];

// ?watchdog=MS on the coordinator's URL (the page passes its own) shortens the wait for a heartbeat, for tests
const watchdogMs = Number(new URLSearchParams(self.location.search).get('watchdog')) || 180000;

const describeHelperCommand = (msg) => ({
  h_models: 'loaded the models', h_eval: `evaluated part ${msg.part + 1} of ${msg.parts}`,
  h_open: 'opened the checkpoint to compress', h_work: 'did a compression\'s work',
  h_original: 'loaded the original', h_point: `compressed and measured sweep point ${msg.index + 1}`,
  h_sensitivity: `measured sensitivity part ${msg.part + 1} of ${msg.parts}`,
}[msg.cmd] || msg.cmd);

/**
 * A new helper. `call()` sends a command and resolves with its result; progress messages go to `onProgress`. A
 * helper that traps, fails to start or stops beating is dead: it is terminated, its call is rejected with an error
 * marked `helperDied` that says so, and the job replaces it.
 * @returns {Helper}
 */
export function startHelper() {
  const w = new Worker(new URL('./helper.js', import.meta.url), { type: 'module' });
  /** @type {Helper} */
  const h = { w, generation: -1, originalGen: -1, loaded: false, pending: null, onProgress: null, alive: true, beat: performance.now(), heap: 0, die: null, call: null };
  h.die = (why) => {
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
  w.onmessage = (e) => {
    const m = e.data;
    h.beat = performance.now();
    if (m.type === 'alive') { h.heap = m.heap; return; }
    if (m.type === 'progress' && h.onProgress) h.onProgress(m);
    else if (m.type === 'error' && m.fatal) h.die(m.message);
    else if (m.type === 'result' && h.pending) { const p = h.pending; h.pending = null; p.resolve(m.result); }
    else if ((m.type === 'error' || m.type === 'cancelled') && h.pending) { const p = h.pending; h.pending = null; p.reject(m.type === 'error' ? errorFrom(m) : new Cancelled('cancelled')); }
  };
  w.onerror = (e) => { e.preventDefault(); h.die(e.message || 'it failed to run'); };
  w.onmessageerror = () => h.die('a message from it could not be read');
  h.call = (msg, transfer) => new Promise((resolve, reject) => {
    if (!h.alive) { reject(Object.assign(new Error('a helper worker is gone'), { helperDied: true })); return; }
    h.doing = describeHelperCommand(msg);
    h.beat = performance.now();
    h.pending = { resolve, reject };
    w.postMessage(msg, transfer || []);
  });
  return h;
}

// helpers whose heartbeat stopped (a hang, or killed by the browser) are declared dead
setInterval(() => {
  const now = performance.now();
  for (const h of [...helpers]) if (h.pending && now - h.beat > watchdogMs) h.die(`no heartbeat for ${Math.round((now - h.beat) / 1000)} s`);
}, HEARTBEAT_MS);

/** Every helper: pass a cancel (or a test's fault) on. @param {import('./protocol.js').Command} msg */
export function tellHelpers(msg) {
  for (const h of helpers) h.w.postMessage(msg);
}

/** The compressed model as a File, exported the first time it is wanted (by a helper, the page, or a new worker). */
export function exportedFile() {
  if (typeof held.compressedFile === 'function') held.compressedFile = held.compressedFile();
  return held.compressedFile;
}

/** Bring helper `h` up to date with the coordinator's two models: the compressed one alone when it already holds the
 * original loaded (and the states its evaluations kept). @param {Helper} h */
export async function holdModels(h) {
  const reuse = h.loaded && h.originalGen === held.originalGeneration;
  await h.call({ cmd: 'h_models', original: held.originalFiles, compressed: /** @type {File} */ (held.compressedFile), reuse });
  h.generation = held.generation;
  h.originalGen = held.originalGeneration;
  h.loaded = true;
}

/** The helpers, up to date with the coordinator's models, that can evaluate; [] when none can. */
export async function readyHelpers() {
  const loaded = held.lastLoaded;
  if (!HELPERS || !held.originalFiles || !held.compressedFile || !loaded || loaded.bytes > HELPER_MODEL_LIMIT) return [];
  exportedFile();
  while (helpers.length < HELPERS) helpers.push(startHelper());
  const ready = [];
  await Promise.all(helpers.slice(0, HELPERS).filter((h) => h.alive).map(async (h) => {
    try {
      if (h.generation !== held.generation) await holdModels(h);
      ready.push(h);
    } catch (err) {
      h.die(err.message);
      console.warn(`evaluation helper unavailable: ${err.message}`);
    }
  }));
  return ready;
}

/** Helpers that hold the original's files open (to read the weights a compression's work needs; loaded or not);
 * [] when there is none to have. @param {number} [workers] */
export async function compressionTeam(workers) {
  if (COMPRESS_HELPERS < 2 || workers === 1 || !held.originalFiles) return [];
  while (helpers.length < COMPRESS_HELPERS) helpers.push(startHelper());
  const team = [];
  await Promise.all(helpers.slice(0, COMPRESS_HELPERS).filter((h) => h.alive).map(async (h) => {
    // the original it holds already, or its files opened afresh (nothing loaded)
    const reuse = h.originalGen === held.originalGeneration;
    if (!reuse) { h.generation = -1; h.originalGen = -1; h.loaded = false; }
    try {
      await h.call({ cmd: 'h_open', original: held.originalFiles, reuse });
      h.originalGen = held.originalGeneration;
      team.push(h);
    } catch (err) {
      console.warn(`compression helper unavailable: ${err.message}`);
    }
  }));
  return team;
}

/** Helpers holding the loaded original (for the explorer's sweeps and sensitivity tables); [] when the model is too
 * large to hold once per helper, or there is one core. */
export async function originalTeam() {
  if (COMPRESS_HELPERS < 2 || !held.originalFiles || !held.lastLoaded || held.lastLoaded.bytes > HELPER_MODEL_LIMIT) return [];
  while (helpers.length < COMPRESS_HELPERS) helpers.push(startHelper());
  const team = [];
  await Promise.all(helpers.slice(0, COMPRESS_HELPERS).filter((h) => h.alive).map(async (h) => {
    try {
      if (h.originalGen !== held.originalGeneration || !h.loaded) await loadOriginal(h);
      team.push(h);
    } catch (err) {
      console.warn(`explorer helper unavailable: ${err.message}`);
    }
  }));
  return team;
}

/** Helper `h` opens and loads the original alone. @param {Helper} h */
export async function loadOriginal(h) {
  await h.call({ cmd: 'h_original', original: held.originalFiles });
  h.generation = -1; // it holds the original alone, not the evaluation's pair
  h.originalGen = held.originalGeneration;
  h.loaded = true;
}

/**
 * Items 0..n-1 shared by the team, each helper taking the next from one queue: `call(h, i)` runs item i on helper h,
 * `accept(i, result, k)` keeps what helper k returned. A helper that dies is replaced (`prepare(h)` brings the new
 * one up to the team's state) and its item put back in the queue (each item is tried three times at most). Any other
 * failure, or a cancel, stops the team.
 * @param {Helper[]} team @param {number} n
 * @param {{call: (h: Helper, i: number) => Promise<any>, accept: (i: number, got: any, k: number) => void,
 *   prepare: (h: Helper) => Promise<any>}} o
 */
export async function shareQueue(team, n, { call, accept, prepare }) {
  const queue = [...Array(n).keys()];
  const tries = new Array(n).fill(0);
  let stop = false;
  const feed = async (h, k) => {
    while (queue.length && !stop) {
      if (instance.cancelled) throw new Cancelled('cancelled');
      faultPoint();
      const index = queue.shift();
      let got;
      try {
        got = await call(h, index);
      } catch (err) {
        if (!err.helperDied || stop || ++tries[index] >= 3) throw err;
        console.warn(`${err.message}: item ${index + 1} goes back in the queue for a new helper`);
        held.replaced += 1;
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

/**
 * One part of a job run by helper `h` (`call(h)`), redone by a new helper (`prepare(h)` first) if it dies, twice at
 * most.
 * @param {Helper} h @param {(h: Helper) => Promise<any>} call @param {(h: Helper) => Promise<any>} prepare
 * @returns {Promise<any>}
 */
export async function partOnHelper(h, call, prepare, tries = 0) {
  try {
    return await call(h);
  } catch (err) {
    if (!err.helperDied || tries >= 2 || instance.cancelled) throw err;
    console.warn(`${err.message}: its part is redone by a new helper`);
    held.replaced += 1;
    const fresh = startHelper();
    helpers.push(fresh);
    await prepare(fresh);
    return partOnHelper(fresh, call, prepare, tries + 1);
  }
}
