// The page's state and its header: what is open and computed, the status, the error, the progress band; the
// formatting every panel shares. Rendering only: nothing here talks to the worker.
import { Runs } from './runs.js';

/** The page's element with this id: inputs, tables, buttons as index.html makes them (so typed loosely).
 * @type {(id: string) => any} */
export const $ = (id) => document.getElementById(id);

export const app = {
  defaults: null,       // the core's default Policy (the worker sends it first)
  model: null,          // the open report of the original model
  name: 'model',        // what to call it in file names
  opened: false,        // an original checkpoint is open (it can be compressed)
  loaded: false,        // the original model is in memory (it can run and be evaluated)
  compressed: false,    // a compressed model exists
  canExport: false,     // it was compressed here
  layers: [],           // layer reports
  plan: [],             // matrices considered
  sort: { key: null, dir: 1 },
  currentRun: null,     // the run whose compressed model the worker holds (its generations join it)
  quick: new Map(),     // request id → {resolve, reject}: quick questions (a preview) that are not jobs
  sweepPoints: [],      // the explorer's sweep, point by point
  sensRows: [],         // the explorer's sensitivity table, row by row
  gen: { original: [], compressed: [], diverged: -1 },
  pending: new Map(), // request id → {resolve, reject}: jobs may overlap (a plot's spectrum, a user's command)
  nextId: 0,
  task: null,           // {name, start}
  source: null,         // what was opened ({files} or {demo: true}): a new worker reopens it if the old one dies
  checkpoint: null,     // the last compression as a File (kept when small enough), for a new worker to take over
  story: { running: false, cancelled: false, plan: null }, // the origin's story, while it is told (plan: its estimate)
  lastRates: null,      // the last generation's decode rates, by model
  device: '',           // where evaluations and generations run (the worker's label)
  beat: 0,              // when the worker last spoke, and the wasm memory it reported
  heap: 0,
};

export function setState(state, text) {
  $('status').dataset.state = state;
  $('status-text').textContent = text || state;
}

export function showError(message) {
  setState('error', 'error');
  $('error').hidden = false;
  $('error').textContent = message;
}

export function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

export function setBusy(on) {
  $('cancel').disabled = !on;
  $('progress').classList.toggle('on', on);
  $('progress').setAttribute('aria-hidden', String(!on));
  for (const id of ['load-demo', 'files', 'folder']) $(id).disabled = on;
  $('compress').disabled = on || !app.opened;
  $('story').disabled = on || !app.loaded || app.story.running;
  $('generate').disabled = on || !(app.loaded || app.compressed);
  $('export').disabled = on || !app.canExport;
  $('report').disabled = on || !app.model;
  $('sweep').disabled = on || !app.loaded;
  $('sensitivity').disabled = on || !app.loaded;
  if (!on) app.task = null;
}

export function showProgress(m) {
  if (!app.task || app.task.name !== m.task) app.task = { name: m.task, start: performance.now() };
  $('progress-bar').max = Math.max(1, m.total);
  $('progress-bar').value = m.done;
  $('progress-text').textContent = `${m.task} ${m.done}/${m.total}${m.label ? ' · ' + m.label : ''}`;
  const elapsed = (performance.now() - app.task.start) / 1000;
  const left = m.done > 0 ? elapsed / m.done * (m.total - m.done) : NaN;
  // while the story runs, its own time left: the rest of the step running now and every step after it
  const story = app.story.plan ? app.story.plan.left() : NaN;
  $('progress-eta').textContent = Number.isFinite(story)
    ? `about ${fmtSeconds(story)} left in the story`
    : Number.isFinite(left) && m.done < m.total ? `about ${fmtSeconds(left)} left` : '';
}

export const fmtBytes = (b) => b >= 1e9 ? (b / 1e9).toFixed(2) + ' GB' : b >= 1e6 ? (b / 1e6).toFixed(1) + ' MB' : b >= 1e3 ? (b / 1e3).toFixed(1) + ' kB' : `${b} B`;

export const fmtSeconds = (s) => s >= 90 ? `${Math.round(s / 60)} min` : `${Math.max(1, Math.round(s))} s`;

export const pct = (x) => (x === null || x === undefined ? '–' : (100 * x).toFixed(2) + '%');

export function fmtNumber(name, v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (name.startsWith('bytes') || name.startsWith('resident') || name.startsWith('layers')) return String(Math.round(v));
  if (name.startsWith('ppl')) return v >= 1e4 ? v.toExponential(3) : v.toFixed(2);
  if (name === 'mse' || name === 'kl') return v >= 100 ? v.toFixed(1) : v.toPrecision(4);
  if (name === 'seconds') return v.toFixed(1);
  return v.toFixed(4);
}

export const runs = new Runs({ table: $('runs-table'), compare: $('runs-compare'), plot: $('runs-plot'), fmt: { bytes: fmtBytes, pct, number: fmtNumber } });

export const reduceMotion = window.matchMedia('(prefers-reduced-motion: reduce)').matches;

export function reveal(id) {
  $(id).scrollIntoView({ behavior: reduceMotion ? 'auto' : 'smooth', block: 'start' });
}

// ?memory=BYTES plans for less heap than wasm32's 4 GiB (to try what happens with a model too large to run)
export const MEMORY = Number(new URLSearchParams(location.search).get('memory'));
