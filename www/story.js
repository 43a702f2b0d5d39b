// The origin's story: its presets one after the other, each compressed, evaluated on the same tokens and continuing
// the same prompt, laid out as one comparison that nothing moves in while it streams.
import { $, app, fmtBytes, fmtNumber, pct, reduceMotion, reveal, setBusy, setState, showError } from './page.js';
import { applyPreset, evalSpec, fixFraction, originRank, policyFromForm } from './form.js';
import { ask } from './jobs.js';
import { compressJob } from './results.js';
import { generateJob } from './generation.js';
import * as estimate from './estimate.js';
import { calibrated, isMemoryError } from './protocol.js';

// The origin's presets in order, each compressed, evaluated on the same tokens (those after the calibration text,
// so that the calibrated step is measured on text it did not see) and continuing the same prompt; laid out as one
// comparison. Cancel stops it after the job in progress.
function storySteps(summary) {
  const h = summary.hidden_size;
  const r = originRank(h);
  const fix = fixFraction(summary);
  return [
    { preset: 'origin-all', title: `The origin's setting: rank ${r} everywhere`,
      why: `Rank ${r} is hidden/16, as the origin's 128 was for GPT-Neo-1.3B's 2048, on every linear layer with per-tensor INT8 factors: the setting of the debugging report.` },
    { preset: 'origin-mlp', title: 'The origin\'s fix: the MLP dense',
      why: `The same, with the MLP's two matrices kept dense. It keeps ${(100 * fix).toFixed(1)}% of the linear parameters: the MLP holds most of them.` },
    { preset: 'aware-same', title: 'Activation-aware at the fix\'s size',
      why: `The fix's ${(100 * fix).toFixed(1)}% of linear parameters spread over every layer, each matrix truncated where its inputs (measured on calibration text) are least sensitive, per-row INT8.` },
    { preset: 'default', title: 'The same size, quantized',
      why: 'No SVD: every linear layer as INT4 codes in groups of 64 (4.25 bits per parameter, fewer bytes than the step above), chosen by GPTQ on the same calibration text: compare what it keeps with the factorization above.' },
    { preset: 'int8', title: 'INT8 only',
      why: 'No SVD: every linear layer as INT8 codes with a scale per row. The baseline any factorization has to beat on bytes.' },
    { preset: 'budget', title: 'Half the linear parameters',
      why: 'Plain SVD at 50% of the linear parameters, ranks allocated by spectral energy: what a budget buys without calibration.' },
  ];
}

// 3 / 3 and 4 / 1, 2 and 4
const listed = (items) => (items.length > 1 ? `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}` : String(items[0]));

function storyCell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.append(td);
  return td;
}

export async function tellStory() {
  const steps = storySteps(app.model.summary);
  const body = $('story-table').querySelector('tbody');
  body.replaceChildren();
  $('story-panel').hidden = false;
  $('story').disabled = true;
  app.story = { running: true, cancelled: false, plan: null };
  delete $('story-panel').dataset.notRun;
  // how the story ended, for whoever waits on it (the status also reads 'done' after each step's compression)
  const told = (how) => { $('story-panel').dataset.told = how; };
  told('running');
  const skip = app.defaults.calibration_tokens;
  // what each step will take, from what this session has measured so far (before anything runs)
  const plan = await storyPlan(steps, skip);
  app.story.plan = plan;
  $('story-panel').dataset.expected = String(Math.round(plan.total));
  $('story-note').textContent = `Prompt: ${JSON.stringify($('prompt').value)}. Every step is evaluated on the same ${evalSpec().tokens} tokens of the built-in text, those after its first ${skip} (the calibration text of the activation-aware step). Expected to take about ${estimate.say(plan.total)} on this machine, from ${plan.basis}.`;
  let done = 0;
  // every row laid out before the first run, its cells sized for what will fill them: nothing moves as results
  // stream in
  const row = (step, cells) => {
    const tr = document.createElement('tr');
    tr.dataset.step = step;
    const out = cells.map(([t, cls]) => storyCell(tr, t, cls));
    body.append(tr);
    return { tr, cells: out };
  };
  const continuation = (td, text) => {
    td.replaceChildren(Object.assign(document.createElement('div'), { textContent: text }));
  };
  const first = row('original', [['0'], ['The original model', 'what'], ['1'], ['100%'], ['–'], ['–'], ['–'], ['', 'continuation']]);
  continuation(first.cells[7], 'generating…');
  const rows = steps.map((step, i) => {
    const r = row(step.preset, [[String(i + 1)], ['', 'what'], ['…'], ['…'], ['…'], ['…'], ['…'], ['', 'continuation']]);
    r.cells[1].append(Object.assign(document.createElement('strong'), { textContent: step.title }), document.createElement('br'), step.why);
    continuation(r.cells[7], 'waiting');
    return r;
  });
  // a step this tab has too little memory for: its row says what it would need, and the story goes on without it
  /** @type {{step: number, message: string}[]} */
  const notRun = [];
  const skipped = (i, message, what = 'Not run') => {
    const { tr, cells } = rows[i];
    for (const td of cells.slice(2, 7)) td.textContent = '–';
    continuation(cells[7], `${what} in this tab: ${message}`);
    tr.dataset.notRun = 'memory';
    notRun.push({ step: i + 1, message });
    $('story-panel').dataset.notRun = notRun.map((n) => n.step).join(',');
  };
  // a step whose allocation check this tab has too little memory for runs without it, and its row says so
  const unchecked = (i, message) => {
    const { tr, cells } = rows[i];
    const note = Object.assign(document.createElement('div'), { className: 'unchecked' });
    note.textContent = `Run without its allocation check, which this tab has too little memory for (${message}).`;
    cells[1].append(note);
    tr.dataset.unchecked = 'memory';
  };
  const s = app.model.summary;
  const t0 = performance.now();
  try {
    plan.begin(0);
    const { original } = await generateJob(['original']);
    continuation(first.cells[7], original);
    estimate.learnGeneration(s, null, app.lastRates && app.lastRates.original, app.model.loaded);
    for (const [i, step] of steps.entries()) {
      if (app.story.cancelled) throw Object.assign(new Error('cancelled'), { cancelled: true });
      $('preset').value = step.preset;
      applyPreset(step.preset);
      const { tr, cells } = rows[i];
      continuation(cells[7], 'compressing…');
      tr.scrollIntoView({ block: 'nearest', behavior: reduceMotion ? 'auto' : 'smooth' });
      plan.begin(1 + 2 * i);
      const policy = policyFromForm();
      let r = null;
      for (;;) {
        try {
          r = await compressJob(policy, undefined, { skip }, { reveal: false });
          break;
        } catch (err) {
          if (!isMemoryError(err)) throw err;
          // the allocation check is a refinement of the step, not its point: the step runs without it, and says so
          if (policy.allocation_check && err.kind === 'check-memory') {
            policy.allocation_check = false;
            unchecked(i, err.message);
            continue;
          }
          skipped(i, err.message);
          break;
        }
      }
      if (!r) continue;
      if (!r.evaluation) {
        skipped(i, r.eval_error, 'Compressed, not evaluated');
        continue;
      }
      // what the step took, against what was expected of it: the next estimates are corrected by it
      estimate.learn(estimate.kindOf(policy), plan.parts[1 + 2 * i].compress, r.compress_seconds);
      estimate.learn('evaluate', plan.parts[1 + 2 * i].evaluate, r.evaluation.seconds);
      estimate.evaluated({ ...evalSpec(), skip });
      plan.begin(2 + 2 * i);
      const ev = r.evaluation;
      const lin = r.finished.totals;
      const values = [ev.cosine.toFixed(4), pct(ev.top1), `${fmtNumber('ppl_compressed', ev.ppl_compressed)} (original ${fmtNumber('ppl_original', ev.ppl_original)})`,
        `${fmtBytes(lin.bytes_considered)} → ${fmtBytes(lin.bytes_after)} (${lin.bits_per_param.toFixed(2)} bits a parameter)`, `${fmtBytes(ev.bytes_original)} → ${fmtBytes(ev.bytes_compressed)}`];
      values.forEach((v, k) => { cells[k + 2].textContent = v; });
      tr.dataset.cosine = String(ev.cosine);
      tr.dataset.bytes = String(ev.bytes_compressed);
      tr.classList.toggle('bad', ev.cosine < 0.9);
      tr.classList.toggle('good', ev.cosine >= 0.95);
      continuation(cells[7], 'generating…');
      const { compressed } = await generateJob(['compressed']);
      continuation(cells[7], compressed);
      estimate.learnGeneration(s, policy, app.lastRates && app.lastRates.compressed, app.model.loaded);
      done += 1;
    }
    plan.begin(plan.parts.length);
    $('story-panel').dataset.seconds = ((performance.now() - t0) / 1000).toFixed(1);
    const took = estimate.say((performance.now() - t0) / 1000);
    $('story-note').textContent += notRun.length
      ? ` The story is told (in ${took}) without step${notRun.length > 1 ? 's' : ''} ${listed(notRun.map((n) => n.step))}, which this tab has too little memory for (${notRun[0].message}): compare the rows it could run.`
      : ` The story is told (in ${took}): the setting breaks the model, keeping the MLP dense saves it at little saving, activation-aware SVD at the same parameter count compresses every layer and keeps the quality, and quantization to four bits, smaller still, keeps more.`;
    setState('done', 'story told');
    told('done');
  } catch (err) {
    if (err.lost) {
      $('story-note').textContent += ` Stopped after ${done} of ${steps.length} steps: the worker was lost (see above).`;
      told('lost');
      return;
    }
    if (err.cancelled) {
      $('story-note').textContent += ` Cancelled after ${done} of ${steps.length} steps.`;
      setState(app.loaded ? 'ready' : 'idle', 'story cancelled');
      told('cancelled');
    } else {
      showError(err.message);
      told('error');
    }
  } finally {
    app.story.running = false;
    app.story.plan = null;
    setBusy(app.pending.size > 0);
    // the button was disabled while the story ran, which drops the focus: give it back to a keyboard user
    if (document.activeElement === document.body) $('story').focus();
  }
}

/**
 * What the story will take, part by part (the original's continuation, then each step's compression and evaluation,
 * and its continuation), from the worker's measured speed and the jobs this session has timed; `begin(k)` marks the
 * start of part k, and `left()` is the time left in the whole story (the part running now counted by what it was
 * expected to take, less what it has taken), which the progress band shows.
 */
async function storyPlan(steps, skip) {
  if (!estimate.hasSpeed()) {
    try { estimate.setSpeed(await ask({ cmd: 'speed' })); } catch { /* no estimate then */ }
  }
  const s = app.model.summary;
  const spec = { ...evalSpec(), skip };
  const tokens = Number($('max-new-tokens').value) || 30;
  const keep = $('preset').value;
  /** @type {{compress?: number, evaluate?: number, generate: number, total: number}[]} */
  const parts = [{ generate: estimate.generation(s, null, tokens, app.model.loaded), total: 0 }];
  let first = true;
  // the statistics the last calibrated step collected, which the worker keeps for the next one calibrated the same
  // way (a step without calibration frees them)
  let statistics = null;
  for (const step of steps) {
    applyPreset(step.preset);
    const policy = policyFromForm();
    const calibration = calibrated(policy.method) ? `${policy.calibration_tokens}/${policy.calibration_window}` : null;
    const known = { spectra: !first && !!(policy.budget || policy.energy), calibration: !!calibration && calibration === statistics };
    statistics = calibration;
    const compress = estimate.compression(s, policy, { known });
    const evaluate = estimate.evaluation(s, policy, spec);
    estimate.evaluated(spec);
    if (policy.budget || policy.energy) first = false;
    parts.push({ compress, evaluate, generate: 0, total: compress + evaluate });
    parts.push({ generate: estimate.generation(s, policy, tokens, app.model.loaded), total: 0 });
  }
  $('preset').value = keep;
  applyPreset(keep);
  for (const p of parts) p.total = (p.compress || 0) + (p.evaluate || 0) + (p.generate || 0);
  const total = parts.reduce((a, p) => a + p.total, 0);
  const plan = {
    parts,
    total,
    basis: estimate.hasSpeed() ? 'its measured speed and the jobs timed so far' : 'no measurement yet (a rough guess)',
    current: 0,
    started: performance.now(),
    begin(k) { plan.current = k; plan.started = performance.now(); },
    left() {
      const now = parts[plan.current];
      const spent = (performance.now() - plan.started) / 1000;
      const rest = parts.slice(plan.current + 1).reduce((a, p) => a + p.total, 0);
      return Math.max(0, (now ? now.total : 0) - spent) + rest;
    },
  };
  return plan;
}
