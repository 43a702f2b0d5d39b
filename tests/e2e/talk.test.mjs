// End-to-end test of the page as a talk (Debian's Chromium, headless, playwright-core), with the keyboard only:
// D loads the demo, S tells the origin's story (its setting breaks the model: cosine < 0.5, a broken continuation;
// the fix and activation-aware SVD at the fix's size: > 0.95), R saves the report, which then opens with scripts
// disabled and shows every section; the setting's link (the URL's hash) opened in a new tab reproduces a run's
// summary exactly. Saves tests/e2e/out/story.png and explorer.png (the README's screenshots).
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { start, step, ROOT } from './harness.mjs';

const OUT = path.join(ROOT, 'tests/e2e/out');
fs.mkdirSync(OUT, { recursive: true });

const { server, browser } = await start();
let failed = false;
const watch = (p) => {
  p.on('console', (m) => { if (m.type() === 'error') { console.log('[page console error]', m.text()); failed = true; } });
  p.on('pageerror', (e) => { console.log('[page exception]', e.message); failed = true; });
};
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  watch(page);
  // layout shifts not caused by the user's own input (within 500 ms of it): what "nothing jumps" measures
  await page.addInitScript(() => {
    window.__shifts = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        if (!e.hadRecentInput) window.__shifts.push({ value: e.value, at: Math.round(e.startTime), sources: (e.sources || []).map((s) => s.node ? (s.node.id || s.node.className || s.node.nodeName) : '?').join(' ') });
      }
    }).observe({ type: 'layout-shift', buffered: true });
  });
  await page.goto(server.url);
  const jobs = (p = page) => p.$eval('#status', (e) => Number(e.dataset.jobs || 0));
  const state = (p = page) => p.$eval('#status', (e) => e.dataset.state);
  const errorText = (p = page) => p.textContent('#error');
  const waitJobs = (n, p = page, timeout = 900000) =>
    p.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) >= k, n, { timeout });
  const figures = (p = page) => p.$$eval('#summary [data-metric]', (ns) => Object.fromEntries(ns.filter((n) => n.dataset.metric !== 'seconds').map((n) => [n.dataset.metric, n.textContent])));
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle');
  // keys go to the page, not to a field
  await page.focus('body');

  step('D loads the demo');
  let n = await jobs();
  await page.keyboard.press('d');
  await waitJobs(n + 1);
  assert.equal(await state(), 'ready', await errorText());

  step("S tells the origin's story: its setting, its fix, activation-aware at the fix's size, the same size quantized, INT8 only and 50%");
  n = await jobs();
  await page.keyboard.press('s');
  // the original's continuation, then a compression and a generation per step
  await waitJobs(n + 13);
  // the story's own end (the status reads 'done' after each step's compression too, before its generation)
  await page.waitForFunction(() => ['done', 'error', 'lost', 'cancelled'].includes(document.querySelector('#story-panel').dataset.told), null, { timeout: 900000 });
  assert.equal(await page.$eval('#story-panel', (e) => e.dataset.told), 'done', await errorText());
  assert.equal(await state(), 'done', await errorText());
  const rows = await page.$$eval('#story-table tbody tr', (rs) => rs.map((r) => ({ step: r.dataset.step,
    cosine: Number(r.dataset.cosine), text: r.querySelector('.continuation').textContent })));
  assert.deepEqual(rows.map((r) => r.step), ['original', 'origin-all', 'origin-mlp', 'aware-same', 'default', 'int8', 'budget']);
  const by = Object.fromEntries(rows.map((r) => [r.step, r]));
  assert.ok(by['origin-all'].cosine < 0.5, `the origin's setting: cosine ${by['origin-all'].cosine}`);
  assert.ok(by['origin-mlp'].cosine > 0.95, `the origin's fix: cosine ${by['origin-mlp'].cosine}`);
  assert.ok(by['aware-same'].cosine > 0.95, `activation-aware at the fix's size: cosine ${by['aware-same'].cosine}`);
  // the same size quantized: fewer bytes than activation-aware SVD at the fix's size, and closer to the original
  const bytesOf = (step) => page.$eval(`#story-table tr[data-step="${step}"]`, (r) => r.dataset.bytes);
  assert.ok(Number(await bytesOf('default')) < Number(await bytesOf('aware-same')), 'GPTQ INT4 stores fewer bytes than the factorization');
  assert.ok(by.default.cosine > by['aware-same'].cosine, `quantized: cosine ${by.default.cosine} against ${by['aware-same'].cosine}`);
  // a visibly broken continuation: not one of its first words is the original's; the fix's begins like it
  const words = (t) => t.trim().split(/\s+/).slice(0, 5);
  const shared = (a, b) => words(a).filter((w) => words(b).includes(w)).length;
  assert.equal(shared(by['origin-all'].text, by.original.text), 0, `broken: ${JSON.stringify(by['origin-all'].text)}`);
  assert.ok(shared(by['aware-same'].text, by.original.text) >= 3, `activation-aware: ${JSON.stringify(by['aware-same'].text)}`);
  assert.ok(rows.every((r) => r.text.length > 0 && !/…$/.test(r.text) && r.text !== 'waiting'), 'every step has its continuation');
  for (const r of rows) console.log(`  ${r.step}: cosine ${r.step === 'original' ? '–' : r.cosine.toFixed(4)}, ${JSON.stringify(r.text.slice(0, 50))}`);
  // nothing jumped while the story's results streamed in (the cumulative layout shift, as browsers score it)
  const shifts = await page.evaluate(() => window.__shifts);
  const cls = shifts.reduce((a, e) => a + e.value, 0);
  const bySource = {};
  for (const e of shifts) bySource[e.sources] = (bySource[e.sources] || 0) + e.value;
  const worst = Object.entries(bySource).sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, v]) => `${v.toFixed(4)} ${k}`).join('; ');
  console.log(`  layout shifts not caused by input: ${shifts.length}, total ${cls.toFixed(4)}${shifts.length ? ` (most: ${worst})` : ''}`);
  assert.ok(cls < 0.02, `the page moved while results streamed in: layout shift ${cls.toFixed(4)}`);

  // the whole panel, from a full-page picture (the sticky header stays at the top of the page, not over it)
  const box = await page.$eval('#story-panel', (e) => { const r = e.getBoundingClientRect(); return { x: r.x, y: r.y + window.scrollY, width: r.width, height: r.height }; });
  await page.screenshot({ path: path.join(OUT, 'story.png'), fullPage: true, clip: box });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'story', 'the key moved the focus to its button');
  step('runs compared: the story\'s six runs kept, sorted by cosine, two side by side with their continuations');
  const runIds = () => page.$$eval('#runs-table tbody tr', (rs) => rs.map((r) => Number(r.dataset.run)));
  assert.deepEqual(await runIds(), [1, 2, 3, 4, 5, 6]);
  await page.click('#runs-table th[data-key="cosine"] button');
  const cosines = await page.$$eval('#runs-table tbody tr td:nth-child(4)', (ts) => ts.map((t) => Number(t.textContent)));
  assert.deepEqual(cosines, cosines.slice().sort((a, b) => a - b), 'sorted by cosine');
  assert.equal((await runIds())[0], 1, 'the origin\'s setting is the worst');
  await page.check('#runs-table tr[data-run="1"] input');
  // the plot's point of run 3 (activation-aware at the fix's size) picks it
  // (by the keyboard: every point is a button)
  await page.focus('#runs-plot circle[role="button"]:nth-of-type(4)');
  await page.keyboard.press('Enter');
  const compared = await page.$$eval('#runs-compare .run', (rs) => rs.map((r) => ({ n: Number(r.dataset.run), text: r.querySelector('pre')?.textContent })));
  assert.deepEqual(compared.map((r) => r.n), [1, 3], 'runs 1 and 3 side by side');
  assert.equal(compared[0].text, by['origin-all'].text, 'run 1 keeps its continuation');
  assert.equal(compared[1].text, by['aware-same'].text, 'run 3 keeps its continuation');
  assert.equal(await page.$$eval('#runs-compare .layers tbody tr', (r) => r.length), 49, 'their layer tables, matrix by matrix (the tied head too)');
  assert.match(await page.textContent('#runs-compare .run[data-run="3"] tr[data-metric="cosine"] .delta'), /^\+/, 'the better cosine, as a delta');

  step('R saves the report; it opens with scripts disabled and shows every section');
  const [download] = await Promise.all([page.waitForEvent('download'), page.keyboard.press('r')]);
  const file = path.join(OUT, 'report.html');
  await download.saveAs(file);
  const html = fs.readFileSync(file, 'utf8');
  assert.doesNotMatch(html, /<script/i, 'the report has no script');
  const offline = await browser.newContext({ javaScriptEnabled: false });
  const report = await offline.newPage();
  const requests = [];
  report.on('request', (r) => requests.push(r.url()));
  await report.goto(`file://${file}`);
  for (const id of ['report-model', 'report-policy', 'report-summary', 'report-plots', 'report-layers', 'report-generation', 'report-story', 'report-runs']) {
    assert.ok(await report.isVisible(`#${id}`), `the report shows #${id}`);
    assert.ok((await report.textContent(`#${id}`)).trim().length > 20, `#${id} has content`);
  }
  assert.ok(await report.$$eval('#report-plots svg', (s) => s.length) >= 3, 'the plots, as inline SVG');
  assert.ok(await report.$$eval('#report-layers tbody tr', (r) => r.length) >= 48, 'the per-layer table');
  assert.equal(await report.$$eval('#report-story tbody tr', (r) => r.length), 7, 'the story');
  assert.equal(await report.$$eval('#report-runs #runs-table tbody tr', (r) => r.length), 6, 'the runs compared');
  assert.equal(await report.$$eval('#report-runs .run', (r) => r.length), 2, 'the two side by side');
  assert.match(await report.textContent('#report-summary'), /Linear layers \(what compression can touch\)/);
  assert.deepEqual(requests.filter((u) => !u.startsWith('file:')), [], 'the report makes no request');
  await report.screenshot({ path: path.join(OUT, 'report.png'), fullPage: true });
  await offline.close();

  step('the link reproduces a run: C compresses with the current setting, the URL opened in a new tab gives the same summary');
  // a setting whose ranks the shapes fix, so the form's preview states its sizes before it runs
  await page.selectOption('#preset', 'default');
  await page.focus('body');
  n = await jobs();
  await page.keyboard.press('c');
  await waitJobs(n + 1);
  assert.equal(await state(), 'done', await errorText());
  const want = await figures();
  // the form's preview said what this run stores, before it ran
  const [, linearAfter, untouched] = (await page.$eval('#summary', (e) => e.dataset.linearBytes)).split(',').map(Number);
  assert.equal(Number(await page.$eval('#preview', (e) => e.dataset.linearAfter)), linearAfter, 'the preview\'s linear bytes are the run\'s');
  assert.equal(Number(await page.$eval('#preview', (e) => e.dataset.totalAfter)), linearAfter + untouched, 'and its total');
  const link = page.url();
  assert.match(link, /#.*model=demo/);
  const again = await context.newPage();
  watch(again);
  await again.goto(link);
  await again.waitForFunction(() => document.querySelector('#status').dataset.state === 'ready', null, { timeout: 300000 });
  for (const id of ['method', 'rank', 'budget', 'budget-mode', 'eval-tokens', 'preset']) {
    assert.equal(await again.inputValue(`#${id}`), await page.inputValue(`#${id}`), `#${id} from the link`);
  }
  await again.focus('body');
  n = await jobs(again);
  await again.keyboard.press('c');
  await waitJobs(n + 1, again);
  assert.equal(await state(again), 'done', await errorText(again));
  // every figure of the run exactly, the measured resident bytes too (the first tab ran the story before; this one
  // ran nothing)
  const got = await figures(again);
  assert.ok(Number(got.resident_bytes_compressed) > 0, 'resident bytes measured');
  assert.deepEqual(got, want, 'the same summary from the link');
  console.log(`  ${link.slice(link.indexOf('#'), link.indexOf('#') + 90)}… → cosine ${want.cosine}, ${want.bytes_compressed} bytes`);

  step('the explorer: a sweep (plain SVD, INT8 only, INT4 in groups of 64) drawn as quality against bits per parameter; the sensitivity heatmap fills the skip list');
  await page.check('#sweep-recipes input[value="svd-energy"]');
  await page.uncheck('#sweep-recipes input[value="whitened-proportional"]');
  await page.check('#sweep-recipes input[value="int8"]');
  await page.check('#sweep-recipes input[value="quant4-g64"]');
  await page.fill('#sweep-budgets', '0.3, 0.6');
  await page.fill('#sweep-tokens', '128');
  n = await jobs();
  await page.click('#sweep');
  await waitJobs(n + 1);
  assert.equal(await state(), 'done', await errorText());
  assert.equal(await page.$eval('#sweep-plot', (e) => e.dataset.points), '4', 'two budgets of SVD, the INT8 point and the INT4 point');
  assert.equal(await page.$$eval('#sweep-plot circle[data-recipe="svd-energy"]', (c) => c.length), 2);
  assert.equal(await page.$$eval('#sweep-plot circle[data-recipe="int8"]', (c) => c.length), 1);
  assert.equal(await page.$$eval('#sweep-plot circle[data-recipe="quant4-g64"]', (c) => c.length), 1);
  assert.match(await page.textContent('#sweep-plot'), /bits per linear parameter/);
  assert.equal(await page.$$eval('#sweep-plot [data-current]', (c) => c.length), 1, 'the current run ringed');
  console.log(`  ${await page.textContent('#sweep-note')}`);
  // its figures are the CLI's: slc sweep on the same model, text, recipes, budgets and split
  const cliSweep = JSON.parse(execFileSync(path.join(ROOT, 'target/release/slc'), ['sweep', '--model', path.join(ROOT, 'www/models/neo-bard-8l'),
    '--text', path.join(ROOT, 'www/data/eval-dev.txt'), '--recipes', 'svd-energy,int8,quant4-g64', '--budgets', '0.3,0.6', '--calibration-tokens', '2048',
    '--eval-tokens', '128', '--window', '512', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
  const pageSweep = await page.$$eval('#sweep-table tbody tr', (rs) => rs.map((r) => ({ recipe: r.dataset.recipe, budget: r.dataset.budget, bits: Number(r.dataset.bits), cosine: Number(r.dataset.cosine), ppl_ratio: Number(r.dataset.pplRatio) })));
  assert.equal(pageSweep.length, cliSweep.length);
  assert.equal(pageSweep.find((p) => p.recipe === 'quant4-g64').bits, 4.25, 'INT4 in groups of 64: 4 bits a code and an f16 scale a group');
  for (const [a, b] of pageSweep.map((p, i) => [p, cliSweep[i]])) {
    assert.equal(a.recipe, b.recipe);
    assert.equal(a.bits, b.bits_per_param, `${a.recipe} ${a.budget}: bits per parameter in the page and by the CLI`);
    assert.ok(Math.abs(a.cosine - b.cosine) < 1e-4, `${a.recipe} ${a.budget}: cosine ${a.cosine} in the page, ${b.cosine} by the CLI`);
    assert.ok(Math.abs(a.ppl_ratio / b.ppl_ratio - 1) < 1e-3, `${a.recipe} ${a.budget}: perplexity ratio ${a.ppl_ratio} in the page, ${b.ppl_ratio} by the CLI`);
  }
  await page.selectOption('#method', 'svd');
  await page.fill('#rank', '16');
  await page.fill('#budget', '');
  await page.fill('#sens-tokens', '64');
  n = await jobs();
  await page.click('#sensitivity');
  await waitJobs(n + 1);
  assert.equal(await state(), 'done', await errorText());
  assert.equal(await page.$$eval('#heatmap rect.cell', (c) => c.length), 48, 'every block matrix');
  const kls = await page.$$eval('#heatmap rect.cell', (c) => c.map((e) => Number(e.dataset.kl)));
  assert.ok(kls.every((k) => k >= 0 && Number.isFinite(k)) && Math.max(...kls) > Math.min(...kls), 'KL per matrix');
  // the most damaging matrix, clicked, joins the skip list and the preview follows
  const worstCell = await page.$$eval('#heatmap rect.cell', (c) => c.sort((a, b) => b.dataset.kl - a.dataset.kl)[0].dataset.name);
  await page.fill('#skip', '');
  await page.click(`#heatmap rect[data-name="${worstCell}"]`);
  const pattern = worstCell.replace(/^transformer\./, '').replace(/\.weight$/, '');
  assert.equal(await page.inputValue('#skip'), pattern);
  await page.waitForFunction(() => /dense ×1/.test(document.querySelector('#preview-ranks').textContent));
  assert.equal(await page.inputValue('#preset'), 'custom');
  console.log(`  ${await page.textContent('#sens-note')}`);
  // the runs compared and the explorer, for the README
  // (the sticky header would be drawn over a full-page picture's middle: it stays at the top while it is taken)
  await page.evaluate(() => { document.querySelector('header').style.position = 'static'; });
  const panes = await page.$eval('#runs-panel', (a) => { const b = document.querySelector('#explorer-panel'); const r = a.getBoundingClientRect(), q = b.getBoundingClientRect(); return { x: r.x, y: r.y + window.scrollY, width: r.width, height: q.bottom - r.top }; });
  await page.screenshot({ path: path.join(OUT, 'explorer.png'), fullPage: true, clip: panes });
  await page.evaluate(() => { document.querySelector('header').style.position = ''; });

  step('Escape cancels a running job; large type scales the plots and tables too');
  n = await jobs(again);
  await again.keyboard.press('s');
  await again.waitForFunction(() => document.querySelector('#status').dataset.state === 'generating' || document.querySelector('#status').dataset.state === 'compressing');
  await again.keyboard.press('Escape');
  await again.waitForFunction(() => /Cancelled after/.test(document.querySelector('#story-note').textContent), null, { timeout: 120000 });
  const before = await again.$eval('#layer-errors', (t) => parseFloat(getComputedStyle(t).fontSize));
  await again.keyboard.press('l');
  assert.equal(await again.getAttribute('#large-type', 'aria-pressed'), 'true');
  const after = await again.$eval('#layer-errors', (t) => parseFloat(getComputedStyle(t).fontSize));
  assert.ok(after > before * 1.15, `table type ${before} → ${after} px`);
} catch (e) {
  console.error(e);
  failed = true;
} finally {
  await browser.close();
  server.close();
}
console.log(failed ? 'talk e2e: FAILED' : 'talk e2e: passed');
process.exit(failed ? 1 : 0);
