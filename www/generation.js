// Generation: both models continue one prompt side by side, the first diverging token marked.
import { $, app, reveal, runs, setBusy, setState } from './page.js';
import { run, send } from './jobs.js';
import { samplingParams } from './form.js';

export function addToken(m) {
  const list = app.gen[m.which];
  const span = document.createElement('span');
  span.textContent = m.text;
  span.dataset.id = m.id;
  list.push({ id: m.id, span, token: m.token });
  $(`gen-${m.which}`).append(span);
  if (m.tokens_per_s) $(`rate-${m.which}`).textContent = `${m.tokens_per_s.toFixed(1)} tokens/s`;
  markDivergence();
}

function markDivergence() {
  const { original: o, compressed: c } = app.gen;
  if (app.gen.diverged >= 0) return;
  const n = Math.min(o.length, c.length);
  for (let i = 0; i < n; i++) {
    if (o[i].id !== c[i].id) {
      app.gen.diverged = i;
      const mark = document.createElement('mark');
      mark.className = 'diverge';
      mark.title = `first different token (#${i + 1}): original ${JSON.stringify(o[i].token)}, compressed ${JSON.stringify(c[i].token)}`;
      c[i].span.replaceWith(mark);
      mark.append(c[i].span);
      $('gen-note').textContent = `The continuations part at token ${i + 1}: original ${JSON.stringify(o[i].token)}, compressed ${JSON.stringify(c[i].token)}.`;
      return;
    }
  }
}

export function generate() {
  app.gen = { original: [], compressed: [], diverged: -1 };
  for (const w of ['original', 'compressed']) { $(`gen-${w}`).replaceChildren(); $(`rate-${w}`).textContent = ''; }
  $('gen-note').textContent = '';
  reveal('generate-panel');
  /** @type {('original'|'compressed')[]} */
  const which = [];
  if (app.loaded) which.push('original');
  if (app.compressed) which.push('compressed');
  const prompt = $('prompt').value;
  run({ cmd: 'generate', prompt, params: samplingParams(), which }, (r) => {
    keepGeneration(prompt, which);
    if (which.length === 2 && app.gen.diverged < 0) {
      $('gen-note').textContent = `Both models produced the same ${Math.min(r.original.tokens, r.compressed.tokens)} tokens.`;
    } else if (which.length === 1) {
      $('gen-note').textContent = `Only the ${which[0]} model is loaded; compress to compare.`;
    }
    if (r.device) {
      $('gen-note').textContent += ` Generated on ${r.device}.`;
      $('gen-note').dataset.device = r.device;
    }
    if (which.includes('original') && app.precision === 'f16') {
      $('gen-note').textContent += ' The original ran with its f32 weights converted to f16: f32 does not fit in this tab.';
    }
    setState('done', 'done');
  }, () => {
    for (const w of ['original', 'compressed']) { $(`gen-${w}`).replaceChildren(); $(`rate-${w}`).textContent = ''; }
    app.gen = { original: [], compressed: [], diverged: -1 };
    $('gen-note').textContent = 'Generation cancelled.';
  });
}

// The continuations just streamed join the run whose compressed model made them.
function keepGeneration(prompt, which) {
  if (!app.currentRun) return;
  for (const w of which) runs.setGeneration(app.currentRun, prompt, w, app.gen[w].map((t) => t.span.textContent).join(''));
}

// The same prompt continued by `which` models, streamed into the generation panel; resolves with each one's text.
export async function generateJob(which) {
  app.gen = { original: [], compressed: [], diverged: -1 };
  for (const w of which) { $(`gen-${w}`).replaceChildren(); $(`rate-${w}`).textContent = ''; }
  const prompt = $('prompt').value;
  const r = await send({ cmd: 'generate', prompt, params: samplingParams(), which });
  // each model's decode rate (tokens/s after the first), what the next estimates of a generation start from
  app.lastRates = Object.fromEntries(which.map((w) => [w, r[w].tokens_per_s]));
  keepGeneration(prompt, which);
  setBusy(false);
  return Object.fromEntries(which.map((w) => [w, app.gen[w].map((t) => t.span.textContent).join('')]));
}
