// Talking to the worker: commands sent and settled, quick questions, streamed events handed to the features that
// registered for them, and a lost worker replaced by a new one that reopens what was open.
import { HEARTBEAT_MS, errorFrom } from './protocol.js';
import { $, app, clearError, fmtBytes, fmtSeconds, MEMORY, setBusy, setState, showError, showProgress } from './page.js';
// The worker is replaceable: when it dies (a trap, memory that would not grow, an uncaught error, or a heartbeat
// that stopped), every job it had ends with a sentence saying so, and a new worker reopens the model and the last
// compression, so that what the page shows stays usable. ?watchdog=MS shortens the wait for a heartbeat (tests).
const WATCHDOG = Number(new URLSearchParams(location.search).get('watchdog')) || 180000;
// ?device=cpu|gpu forces where evaluations and generations run (the worker reads it)
const DEVICE = new URLSearchParams(location.search).get('device');

let worker = null;

/** Streamed events by type ('plan', 'layer', 'target', 'token', 'point', 'row'): each feature's handler, set by
 * app.js with {@link on}. @type {Object<string, (m: any) => void>} */
const handlers = {};

/** Hand the worker's streamed events of `type` to `handler`. @param {string} type @param {(m: any) => void} handler */
export function on(type, handler) {
  handlers[type] = handler;
}

/** A message for the worker that is not a job (cancel, a test's fault). @param {object} msg */
export function postToWorker(msg) {
  worker.postMessage(msg);
}

function startWorker() {
  const url = new URL('./coordinator.js', import.meta.url);
  if (WATCHDOG !== 180000) url.searchParams.set('watchdog', String(WATCHDOG));
  if (DEVICE) url.searchParams.set('device', DEVICE);
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

/** Start a job in the worker; resolves with its result, rejects with its error (a cancel: `cancelled`; a lost worker:
 * `lost`). @param {import('./protocol.js').Command} msg @returns {Promise<any>} */
export function send(msg, { keepError = false } = {}) {
  if (!keepError) clearError();
  setBusy(true);
  return new Promise((resolve, reject) => {
    const id = ++app.nextId;
    app.pending.set(id, { resolve, reject, cmd: msg.cmd });
    worker.postMessage({ ...msg, id });
  });
}

/** A quick question (a preview): no job, no busy state, no progress; answered between the steps of a running job.
 * @param {import('./protocol.js').Command} msg @returns {Promise<any>} */
export function ask(msg) {
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
    case 'plan': case 'layer': case 'target': case 'token': case 'point': case 'row': case 'device':
      if (handlers[m.type]) handlers[m.type](m);
      break;
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

/** Send a command; `after` gets its result. A cancelled job leaves nothing half-done on the page: `onCancel` clears
 * what it had streamed in. @param {import('./protocol.js').Command} msg @param {(result: any) => void} after
 * @param {() => void} [onCancel] */
export async function run(msg, after, onCancel) {
  try {
    const result = await send(msg);
    after(result);
  } catch (err) {
    if (err.lost) return; // workerLost has said what happened
    if (!err.cancelled) showError(err.message);
    else if (onCancel) onCancel();
  }
}
