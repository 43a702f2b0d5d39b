// The origin's story: its presets one after the other, each compressed, evaluated on the same tokens and continuing
// the same prompt, laid out as one comparison that nothing moves in while it streams.
import { $, app, fmtBytes, fmtNumber, pct, reduceMotion, reveal, setBusy, setState, showError } from './page.js';
import { applyPreset, evalSpec, fixFraction, originRank, policyFromForm } from './form.js';
import { compressJob } from './results.js';
import { generateJob } from './generation.js';

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
    { preset: 'int8', title: 'INT8 only',
      why: 'No SVD: every linear layer as INT8 codes with a scale per row. The baseline any factorization has to beat on bytes.' },
    { preset: 'budget', title: 'Half the linear parameters',
      why: 'Plain SVD at 50% of the linear parameters, ranks allocated by spectral energy: what a budget buys without calibration.' },
  ];
}

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
  app.story = { running: true, cancelled: false };
  // how the story ended, for whoever waits on it (the status also reads 'done' after each step's compression)
  const told = (how) => { $('story-panel').dataset.told = how; };
  told('running');
  const skip = app.defaults.calibration_tokens;
  $('story-note').textContent = `Prompt: ${JSON.stringify($('prompt').value)}. Every step is evaluated on the same ${evalSpec().tokens} tokens of the built-in text, those after its first ${skip} (the calibration text of the activation-aware step).`;
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
  try {
    const { original } = await generateJob(['original']);
    continuation(first.cells[7], original);
    for (const [i, step] of steps.entries()) {
      if (app.story.cancelled) throw Object.assign(new Error('cancelled'), { cancelled: true });
      $('preset').value = step.preset;
      applyPreset(step.preset);
      const { tr, cells } = rows[i];
      continuation(cells[7], 'compressing…');
      tr.scrollIntoView({ block: 'nearest', behavior: reduceMotion ? 'auto' : 'smooth' });
      const r = await compressJob(policyFromForm(), undefined, { skip }, { reveal: false });
      const ev = r.evaluation;
      const lin = r.finished.totals;
      const values = [ev.cosine.toFixed(4), pct(ev.top1), `${fmtNumber('ppl_compressed', ev.ppl_compressed)} (original ${fmtNumber('ppl_original', ev.ppl_original)})`,
        `${fmtBytes(lin.bytes_considered)} → ${fmtBytes(lin.bytes_after)}`, `${fmtBytes(ev.bytes_original)} → ${fmtBytes(ev.bytes_compressed)}`];
      values.forEach((v, k) => { cells[k + 2].textContent = v; });
      tr.dataset.cosine = String(ev.cosine);
      tr.classList.toggle('bad', ev.cosine < 0.9);
      tr.classList.toggle('good', ev.cosine >= 0.95);
      continuation(cells[7], 'generating…');
      const { compressed } = await generateJob(['compressed']);
      continuation(cells[7], compressed);
      done += 1;
    }
    $('story-note').textContent += ' The story is told: the setting breaks the model, keeping the MLP dense saves it at little saving, and activation-aware SVD at the same parameter count compresses every layer and keeps the quality.';
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
    setBusy(app.pending.size > 0);
    // the button was disabled while the story ran, which drops the focus: give it back to a keyboard user
    if (document.activeElement === document.body) $('story').focus();
  }
}
