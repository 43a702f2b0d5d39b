// The explorer: a sweep of methods × budgets drawn as quality against bits per linear parameter, and a sensitivity heatmap whose
// cells add a matrix to the skip list; both streamed in from the worker's helpers.
import * as plots from './plots.js';
import { $, app, fmtBytes, pct, setState, showError } from './page.js';
import { run } from './jobs.js';
import * as estimate from './estimate.js';
import { evalSpec, policyFromForm } from './form.js';

// A sweep (methods × budgets, each compressed and measured) and a sensitivity table (each matrix compressed alone),
// both run by the worker and its helpers, streamed in point by point and row by row; cancel stops them.
function sweepSettings() {
  const recipes = [.../** @type {NodeListOf<HTMLInputElement>} */ (document.querySelectorAll('#sweep-recipes input:checked'))].map((i) => i.value);
  if (!recipes.length) throw new Error('the sweep needs at least one method: tick one');
  const budgets = $('sweep-budgets').value.split(',').map((x) => x.trim()).filter(Boolean).map(Number);
  const unit = $('sweep-budget-unit').value;
  if (recipes.includes('auto') && unit !== 'bits') throw new Error('method auto weighs codes against factors by the bytes they store: count the sweep\'s budgets in bits per linear parameter');
  const top = unit === 'bits' ? 32 : 1;
  if (!budgets.length || budgets.some((b) => !(b > 0 && b <= top))) throw new Error(`sweep budgets "${$('sweep-budgets').value}" must be ${unit === 'bits' ? 'bits per parameter in (0, 32]' : 'fractions in (0, 1]'}, comma-separated`);
  const tokens = Number($('sweep-tokens').value);
  if (!(Number.isInteger(tokens) && tokens >= 2)) throw new Error('the sweep measures at least 2 tokens');
  // the form's storage and calibration; each recipe brings its method and allocation, each point its budget
  const base = { ...policyFromForm(), skip: [], rank_for: [], energy: null, budget: null, budget_unit: unit };
  return { recipes, budgets, base, evalTokens: tokens };
}

export function drawSweep() {
  const metric = $('sweep-metric').value;
  const r = app.currentRun;
  const current = r && r.linear.bits ? { bits: r.linear.bits, value: metric === 'cosine' ? r.ev.cosine : r.ev.ppl_compressed / r.ev.ppl_original } : null;
  const original = r && r.linear.denseBits ? r.linear.denseBits : app.linearBits || null;
  plots.sweep($('sweep-plot'), app.sweepPoints, { metric, current, original });
  // the same points as numbers, in the order they were asked for
  $('sweep-table').querySelector('tbody').replaceChildren(...app.sweepPoints.filter(Boolean).map((p) => {
    const tr = document.createElement('tr');
    tr.dataset.recipe = p.recipe;
    tr.dataset.budget = p.budget ?? '';
    tr.dataset.bits = String(p.bits_per_param);
    tr.dataset.cosine = String(p.cosine);
    tr.dataset.pplRatio = String(p.ppl_ratio);
    for (const [text, cls] of [[p.recipe, ''], [p.budget ?? '–', 'num'], [pct(p.params_kept), 'num'], [p.bits_per_param.toFixed(2), 'num'], [fmtBytes(p.layer_bytes), 'num'],
      [p.cosine.toFixed(4), 'num'], [pct(p.top1), 'num'], [p.ppl_ratio.toFixed(3), 'num'], [p.seconds.toFixed(1), 'num']]) {
      tr.append(Object.assign(document.createElement('td'), { textContent: String(text), className: cls }));
    }
    return tr;
  }));
}

export function runSweep() {
  let spec;
  try { spec = sweepSettings(); } catch (err) { showError(err.message); return; }
  app.sweepPoints = [];
  drawSweep();
  const expected = estimate.sweep(app.model.summary, spec);
  $('sweep-note').textContent = `Sweeping ${spec.recipes.join(', ')} at ${spec.budgets.join(', ')}${expected ? `: expected to take about ${estimate.say(expected)} on this machine` : ''}…`;
  run({ cmd: 'sweep', ...spec, evalSpec: evalSpec() }, (r) => {
    app.sweepPoints = r.points;
    drawSweep();
    const split = `the ${spec.evalTokens} tokens after the first ${spec.base.calibration_tokens} of ${$('eval-text').value.trim() ? 'your text' : 'eval-dev.txt'} (those calibrate the activation-aware methods)`;
    $('sweep-note').textContent = `${r.points.length} compressions in ${r.seconds.toFixed(1)} s on ${r.workers} worker${r.workers > 1 ? 's' : ''}, each measured on ${split}; the current run is measured on its own tokens (${evalSpec().tokens}).`;
    $('sweep-plot').dataset.points = String(r.points.length);
    setState('done', 'sweep done');
  }, () => { $('sweep-note').textContent = `Sweep cancelled after ${app.sweepPoints.filter(Boolean).length} points (drawn).`; });
}

// the sensitivity table is measured with the form's method (SVD or activation-aware) and rank, or its budget as
// each matrix's fraction of parameters
function sensitivityPolicy() {
  const p = policyFromForm();
  const method = p.method === 'refit' ? 'whitened' : p.method === 'int8' ? 'svd' : p.method;
  const tokens = Number($('sens-tokens').value);
  if (!(Number.isInteger(tokens) && tokens >= 2)) throw new Error('the sensitivity probe needs at least 2 tokens');
  return { ...p, method, probe: p.budget || null, budget: null, energy: null, skip: [], sensitivity_tokens: tokens };
}

function skipList() {
  return $('skip').value.split(',').map((x) => x.trim()).filter(Boolean);
}

const patternOf = (name) => name.replace(/^transformer\./, '').replace(/\.weight$/, '');

export function drawHeatmap() {
  const skipped = app.sensRows.map((r) => r.name).filter((n) => skipList().includes(patternOf(n)));
  plots.heatmap($('heatmap'), app.sensRows, { layers: app.model ? app.model.summary.num_layers : undefined, skipped, onPick: pickMatrix });
}

// a heatmap cell clicked: that matrix joins the skip list (or leaves it), and the preview follows
function pickMatrix(row) {
  const pattern = patternOf(row.name);
  const list = skipList();
  const i = list.indexOf(pattern);
  if (i >= 0) list.splice(i, 1); else list.push(pattern);
  $('skip').value = list.join(', ');
  $('skip').dispatchEvent(new Event('input'));
  $('sens-note').textContent = `${pattern} ${i >= 0 ? 'left' : 'joined'} the skip list (KL ${row.damage.kl.toPrecision(3)} when compressed alone).`;
  drawHeatmap();
  const cell = $('heatmap').querySelector(`[data-name="${row.name}"]`);
  if (cell) cell.focus();
}

export function measureSensitivity() {
  let policy;
  try { policy = sensitivityPolicy(); } catch (err) { showError(err.message); return; }
  app.sensRows = [];
  drawHeatmap();
  const how = policy.probe ? `${(100 * policy.probe).toFixed(0)}% of each matrix's parameters` : `rank ${policy.rank}`;
  const expected = estimate.sensitivity(app.model.summary, policy);
  $('sens-note').textContent = `Measuring every matrix alone at ${how}${expected ? `: expected to take about ${estimate.say(expected)} on this machine` : ''}…`;
  run({ cmd: 'sensitivity', policy, evalSpec: evalSpec() }, (r) => {
    app.sensRows = r.rows;
    drawHeatmap();
    const worst = r.rows.slice().sort((a, b) => b.damage.kl - a.damage.kl)[0];
    $('sens-note').textContent = `${r.rows.length} matrices, each compressed alone (${policy.method === 'whitened' ? 'activation-aware' : 'plain SVD'}, ${how}), measured on the first ${policy.sensitivity_tokens} tokens of the calibration text in ${r.seconds.toFixed(1)} s on ${r.workers} worker${r.workers > 1 ? 's' : ''}. Most damaging: ${worst ? `${patternOf(worst.name)} (KL ${worst.damage.kl.toPrecision(3)})` : '–'}. Click a cell to keep that matrix dense.`;
    $('heatmap').dataset.rows = String(r.rows.length);
    setState('done', 'sensitivity measured');
  }, () => { $('sens-note').textContent = `Cancelled after ${app.sensRows.length} matrices (drawn).`; });
}
