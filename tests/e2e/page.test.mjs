// End-to-end test of the page: Debian's Chromium, headless, driven by playwright-core (no browser download).
// Loads the demo, compresses at rank 32 with the MLP skipped, checks the table and the summary against
// `slc eval --json` on the same settings, generates, exports, reloads the export, and measures main-thread long
// tasks during the compression. Saves screenshots in tests/e2e/out/.
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import { start, step, ROOT } from './harness.mjs';

const OUT = path.join(ROOT, 'tests/e2e/out');
const SLC = path.join(ROOT, 'target/release/slc');
const DEMO = path.join(ROOT, 'www/models/neo-bard-8l');
const TEXT = path.join(ROOT, 'www/data/eval-dev.txt');
const TOKENS = 1024, WINDOW = 512;
fs.mkdirSync(OUT, { recursive: true });
const ROMEO_CONTINUATION = "\nAnd I will not be my husband's son.\n\n[Exit.]\n\n[Enter RICHARD.]\n\nRICHARD.";
const METRICS = ['cosine', 'mse', 'ppl_original', 'ppl_compressed', 'top1', 'kl', 'bytes_original', 'bytes_compressed', 'layers_compressed', 'layers_total'];

// the CLI on the same settings
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'slc-e2e-'));
execFileSync(SLC, ['compress', '--input_dir', DEMO, '--output_dir', path.join(tmp, 'c'), '--rank', '32', '--skip', 'mlp.c_fc', '--skip', 'mlp.c_proj'], { stdio: 'ignore' });
const cli = JSON.parse(execFileSync(SLC, ['eval', '--original', DEMO, '--compressed', path.join(tmp, 'c'), '--text', TEXT, '--tokens', String(TOKENS), '--window', String(WINDOW), '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());

const { server, browser } = await start();
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 }, acceptDownloads: true });
  const page = await context.newPage();
  // any console error or uncaught exception, in the page or its workers, fails the test
  const watch = (p) => {
    p.on('console', (m) => { if (m.type() === 'error') { console.log('[page console error]', m.text()); failed = true; } });
    p.on('pageerror', (e) => { console.log('[page exception]', e.message); failed = true; });
  };
  context.on('page', watch);
  watch(page);
  await page.addInitScript(() => {
    window.__longTasks = [];
    new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push({ start: e.startTime, duration: e.duration }); })
      .observe({ type: 'longtask', buffered: true });
  });
  await page.goto(server.url);
  const state = () => page.$eval('#status', (e) => e.dataset.state);
  const waitState = async (want, timeout = 300000) => {
    await page.waitForFunction((w) => w.includes(document.querySelector('#status').dataset.state), want, { timeout });
    return state();
  };
  const errorText = () => page.textContent('#error');
  // the run this test compares with the CLI (and with itself in one worker): rank 32, MLP skipped, per-row INT8,
  // evaluation on TOKENS tokens in windows of WINDOW
  const runSettings = async (p) => {
    await p.fill('#rank', '32');
    await p.fill('#skip', 'mlp.c_fc,mlp.c_proj');
    await p.selectOption('#quant', 'per-row');
    await p.selectOption('#method', 'svd');
    await p.fill('#min-dim', '0');
    await p.click('#eval-settings summary');
    await p.fill('#eval-tokens', String(TOKENS));
    await p.fill('#eval-window', String(WINDOW));
  };
  // run `action` on page `p`, then wait for the job it starts to end; the page's state after it
  const jobOn = async (p, action, timeout = 300000) => {
    const n = await p.$eval('#status', (e) => Number(e.dataset.jobs || 0));
    await action();
    await p.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout });
    return p.$eval('#status', (e) => e.dataset.state);
  };
  // give files to input#files, then wait for the job that opens them to end
  const setFiles = async (files) => {
    await jobOn(page, () => page.setInputFiles('#files', files));
  };
  // click, then wait for the job it starts to end
  const clickJob = async (selector, want, timeout = 300000) => {
    const jobs = await page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
    await page.click(selector);
    await page.waitForFunction((n) => Number(document.querySelector('#status').dataset.jobs || 0) > n, jobs, { timeout });
    return waitState(want, timeout);
  };
  const summary = () => page.$$eval('#summary [data-metric]', (ns) => Object.fromEntries(ns.map((n) => [n.dataset.metric, n.textContent])));

  step('load the demo model');
  await waitState(['idle']);
  assert.equal(await clickJob('#load-demo', ['ready', 'error']), 'ready', await errorText());
  assert.match(await page.textContent('#model-info'), /gpt_neo/);

  assert.equal(await page.inputValue('#preset'), 'default');
  assert.equal(await page.inputValue('#method'), 'gptq', 'the default preset is GPTQ INT4 in groups of 64');

  step('settings: rank 32, MLP skipped, per-row INT8; evaluation on 1024 tokens in windows of 512');
  await runSettings(page);

  step('cancel a compression: the page stays usable');
  const jobs = await page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
  await page.click('#compress');
  await page.click('#cancel');
  await page.waitForFunction((n) => Number(document.querySelector('#status').dataset.jobs || 0) > n, jobs);
  assert.equal(await waitState(['ready', 'done', 'error']), 'ready', await errorText());
  assert.match(await page.textContent('#status-text'), /cancelled/);

  step('cancel during the evaluation: no partial result is left on the page');
  await page.fill('#eval-tokens', '8192');
  {
    const n = await page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
    await page.click('#compress');
    await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'evaluating', null, { timeout: 300000 });
    await page.click('#cancel');
    await page.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout: 300000 });
    assert.match(await page.textContent('#status-text'), /cancelled/);
    const s = await summary();
    for (const k of METRICS) assert.equal(s[k], '–', `${k} after a cancelled evaluation`);
    assert.equal(await page.$$eval('table#layer-errors tbody tr', (r) => r.length), 0, 'no layer rows after a cancelled run');
    assert.equal(await page.textContent('#summary-note'), '');
  }
  await page.fill('#eval-tokens', String(TOKENS));

  step('compress and evaluate, watching main-thread long tasks');
  const t0 = await page.evaluate(() => performance.now());
  assert.equal(await clickJob('#compress', ['done', 'error']), 'done', await errorText());
  const t1 = await page.evaluate(() => performance.now());
  const long = await page.evaluate(([a, b]) => window.__longTasks.filter((t) => t.start >= a && t.start <= b), [t0, t1]);
  const worst = Math.max(0, ...long.map((t) => t.duration));
  console.log(`  compression + evaluation took ${((t1 - t0) / 1000).toFixed(1)} s; main-thread long tasks: ${long.length}, longest ${worst.toFixed(0)} ms`);
  assert.ok(worst <= 100, `the main thread blocked for ${worst} ms`);

  step('the table has a row per weight matrix; the summary equals slc eval --json');
  const rows = await page.$$eval('table#layer-errors tbody tr', (r) => r.length);
  assert.equal(rows, cli.layers_total, 'one row per weight matrix considered');
  const got = await summary();
  for (const k of METRICS) {
    const a = Number(got[k]), b = cli[k];
    assert.ok(Number.isFinite(a), `summary ${k} is "${got[k]}"`);
    const tol = Number.isInteger(b) ? 0 : Math.max(1.5e-4, 2e-3 * Math.abs(b));
    assert.ok(Math.abs(a - b) <= tol, `${k}: page ${a} vs CLI ${b}`);
  }
  // the sizes split into what compression can touch and what it cannot, adding up to the checkpoint's tensors
  {
    const [before, after, untouched] = (await page.$eval('#summary', (e) => e.dataset.linearBytes)).split(',').map(Number);
    assert.equal(after + untouched, Number(got.bytes_compressed), 'linear layers after + the rest = the compressed tensors');
    assert.equal(before + untouched, Number(got.bytes_original), 'linear layers before + the rest = the original tensors');
    assert.ok(after < before, 'the linear layers shrank');
    assert.match(await page.textContent('#summary-note'), /Linear layers \(what compression can touch\): [0-9.]+ [kMG]B → [0-9.]+ [kMG]B \([0-9.]+% smaller, [0-9.]+ bits per parameter\); the other tensors .*: [0-9.]+ [kMG]B, as stored\./);
  }
  console.log(`  page: cosine ${got.cosine}, ppl ${got.ppl_original} → ${got.ppl_compressed}, top-1 ${got.top1}, layers ${got.layers_compressed}/${got.layers_total}; CLI: cosine ${cli.cosine.toFixed(4)}, ppl ${cli.ppl_compressed.toFixed(2)}`);
  await page.screenshot({ path: path.join(OUT, 'compressed.png') });
  const exact = await page.$$eval('#summary [data-metric]', (ns) => Object.fromEntries(ns.map((n) => [n.dataset.metric, n.title])));
  // the plots: the spectrum and error curve of a layer with its cut, and this session's run beside the original
  assert.ok(await page.$$eval('#spectrum-plot *', (n) => n.length) > 0, 'spectrum plot drawn');
  assert.ok(await page.$$eval('#error-plot circle', (n) => n.length) >= 1, 'error-vs-rank plot marks the stored error');
  assert.equal(await page.$$eval('#runs-plot circle.pt:not(.orig)', (n) => n.length), 1, 'one run in the session plot');
  const cores = await page.evaluate(() => navigator.hardwareConcurrency || 1);
  if (cores > 1) assert.match(await page.textContent('#summary-note'), /by 2 workers/, 'the evaluation was split');

  step('the same run with ?workers=1 gives exactly the same figures as with helpers');
  {
    const one = await context.newPage();
    await one.goto(server.url + '?workers=1');
    await one.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle');
    await jobOn(one, () => one.click('#load-demo'));
    await runSettings(one);
    await jobOn(one, () => one.click('#compress'));
    assert.equal(await one.$eval('#status', (e) => e.dataset.state), 'done', await one.textContent('#error'));
    assert.doesNotMatch(await one.textContent('#summary-note'), /workers/);
    const single = await one.$$eval('#summary [data-metric]', (ns) => Object.fromEntries(ns.map((n) => [n.dataset.metric, n.title])));
    for (const k of METRICS) assert.equal(single[k], exact[k], `${k}: one worker ${single[k]} vs ${cores > 1 ? 'two' : 'one'} ${exact[k]}`);
    await one.close();
  }

  step('generate from both models side by side');
  await page.fill('#prompt', 'ROMEO. O my love,');
  assert.equal(await clickJob('#generate', ['done', 'error']), 'done', await errorText());
  assert.equal(await page.textContent('#gen-original'), ROMEO_CONTINUATION);
  const comp = await page.textContent('#gen-compressed');
  const cliGen = JSON.parse(execFileSync(SLC, ['generate', '--model', path.join(tmp, 'c'), '--prompt', 'ROMEO. O my love,', '--max-new-tokens', '30', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
  assert.equal(comp, cliGen.text, 'the compressed continuation equals slc generate on the same compressed checkpoint');
  // the first token where the two part is marked, and named in the note
  assert.equal(await page.$$eval('#gen-compressed mark.diverge', (m) => m.length), 1, 'one divergence mark');
  assert.match(await page.textContent('#gen-note'), /The continuations part at token \d+/);
  console.log(`  compressed: ${JSON.stringify(comp.slice(0, 80))}`);
  await page.screenshot({ path: path.join(OUT, 'page.png'), fullPage: true });

  step('cancel during generation: the streamed text is withdrawn');
  {
    await page.click('#gen-settings summary');
    await page.fill('#max-new-tokens', '400');
    const n = await page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
    await page.click('#generate');
    await page.waitForFunction(() => document.querySelectorAll('#gen-original span').length >= 3, null, { timeout: 300000 });
    await page.click('#cancel');
    await page.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout: 300000 });
    assert.match(await page.textContent('#status-text'), /cancelled/);
    assert.equal(await page.textContent('#gen-original'), '');
    assert.equal(await page.textContent('#gen-compressed'), '');
    assert.equal(await page.textContent('#gen-note'), 'Generation cancelled.');
    await page.fill('#max-new-tokens', '30');
  }

  step('export, then load the export back: the same summary');
  const downloadEvent = page.waitForEvent('download');
  assert.equal(await clickJob('#export', ['done', 'error']), 'done', await errorText());
  const download = await downloadEvent;
  const exported = path.join(tmp, download.suggestedFilename());
  await download.saveAs(exported);
  const before = await summary();
  await page.evaluate(() => document.querySelectorAll('#summary [data-metric]').forEach((n) => { n.textContent = '–'; }));
  await setFiles([exported]);
  assert.equal(await waitState(['done', 'error']), 'done', await errorText());
  const after = await summary();
  for (const k of METRICS) assert.equal(after[k], before[k], `${k} after reloading the export`);
  assert.equal(await page.$$eval('table#layer-errors tbody tr', (r) => r.length), rows);

  step('activation-aware SVD: calibrated on the first 512 tokens, evaluated on the 1024 after them');
  await page.selectOption('#preset', 'whitened');
  await page.fill('#calibration-tokens', '512');
  assert.equal(await clickJob('#compress', ['done', 'error']), 'done', await errorText());
  assert.match(await page.textContent('#summary-note'), /tokens 512\.\.1536/);
  const aware = await summary();
  assert.ok(Number(aware.cosine) > 0.8, `activation-aware rank-32 cosine ${aware.cosine}`);
  assert.match(await page.textContent('table#layer-errors'), /error on calibration activations/);
  console.log(`  activation-aware, rank 32, every layer: cosine ${aware.cosine}, ppl ${aware.ppl_original} → ${aware.ppl_compressed}`);
  step("the origin's setting on the demo: rank hidden/16 = 16 on every linear layer breaks it, as rank 128 broke GPT-Neo-1.3B");
  {
    await page.selectOption('#preset', 'origin-all');
    assert.equal(await page.inputValue('#rank'), '16');
    assert.match(await page.$eval('#preset option[value="origin-all"]', (o) => o.textContent), /rank 16 \(= hidden 256 \/ 16/);
    assert.equal(await clickJob('#compress', ['done', 'error']), 'done', await errorText());
    const origin = await summary();
    assert.ok(Number(origin.cosine) < 0.5, `the origin's setting: cosine ${origin.cosine}`);
    assert.equal(origin.layers_compressed, '48');
    console.log(`  the origin's setting (rank 16, every layer): cosine ${origin.cosine}, ppl ${origin.ppl_compressed}`);
  }

  // the methods past activation-aware SVD, on the page and the CLI with the same settings: calibrated on the first
  // `cal` tokens (windows of 256), evaluated on the 1024 after them
  const CAL_WINDOW = 256;
  const cliEval = (dir, cal) => JSON.parse(execFileSync(SLC, ['eval', '--original', DEMO, '--compressed', dir, '--text', TEXT,
    '--skip-tokens', String(cal), '--tokens', String(TOKENS), '--window', String(CAL_WINDOW), '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
  const cliCompress = (dir, cal, args) => JSON.parse(execFileSync(SLC, ['compress', '--input-dir', DEMO, '--output-dir', dir,
    '--calibration-text', TEXT, '--calibration-tokens', String(cal), '--calibration-window', String(CAL_WINDOW), ...args, '--json'],
  { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 28 }).toString());
  // `flips`: top-1 is a count over the TOKENS positions, so rounding that moves an argmax moves it by whole positions
  // `relMse`: the logits' MSE is a squared difference, and moves about twice as much as the figures above it
  const sameAsCli = (got, want, what, rel = 2e-3, flips = 0, relMse = rel) => {
    for (const k of METRICS) {
      const a = Number(got[k]), b = want[k];
      assert.ok(Number.isFinite(a), `${what}: summary ${k} is "${got[k]}"`);
      const r = k === 'mse' ? relMse : rel;
      // (the page shows four decimals: half of the last one is added to the flips' allowance)
      const tol = Number.isInteger(b) ? 0 : Math.max(1.5e-4, r * Math.abs(b), k === 'top1' ? flips / TOKENS + 5e-5 : 0);
      assert.ok(Math.abs(a - b) <= tol, `${what}: ${k}: page ${a} vs CLI ${b}`);
    }
  };
  const newMethod = async (method, budget, mode, cal, refine = 0) => {
    await page.selectOption('#preset', 'custom');
    await page.selectOption('#method', method);
    await page.fill('#skip', '');
    await page.fill('#rank-for', '');
    await page.fill('#energy', '');
    await page.fill('#budget', budget);
    await page.selectOption('#budget-mode', mode);
    await page.selectOption('#quant', 'per-row');
    await page.check('#guard');
    await page.fill('#calibration-tokens', String(cal));
    await page.fill('#eval-window', String(CAL_WINDOW));
    await page.fill('#refine-steps', String(refine));
  };
  // the page's ranks (its layer table) and the CLI's (its report)
  const sameRanks = async (dir) => {
    const ranks = await page.$$eval('table#layer-errors tbody tr', (rs) => Object.fromEntries(rs.map((r) => [r.dataset.name, r.children[2].textContent])));
    const report = JSON.parse(fs.readFileSync(path.join(dir, 'compression_report.json'), 'utf8'));
    const differ = report.layers.filter((l) => ranks[l.name] !== String(l.rank ?? '–')).map((l) => `${l.name}: page ${ranks[l.name]}, CLI ${l.rank}`);
    assert.deepEqual(differ, [], 'the same rank for every matrix');
  };
  // `rel`: the relative agreement asked of the page's compression and the CLI's (wasm and native round differently)
  // the page's figures are those of the checkpoint it exports, to the printed digit: the export saved as a folder
  // and measured by the CLI on the tokens after `skip`
  const exportMatchesPage = async (what, got, skip) => {
    const dl = page.waitForEvent('download');
    assert.equal(await clickJob('#export', ['done', 'error']), 'done', await errorText());
    const mine = path.join(tmp, `${what}-page`);
    fs.mkdirSync(mine);
    await (await dl).saveAs(path.join(mine, 'model.safetensors'));
    sameAsCli(got, cliEval(mine, skip), `${what} (the page's export in the CLI)`);
  };
  const newMethodAgainstCli = async (what, method, budget, mode, cal, rel, flips = 0, relMse = rel, refine = 0) => {
    await newMethod(method, budget, mode, cal, refine);
    assert.equal(await clickJob('#compress', ['done', 'error'], 900000), 'done', await errorText());
    assert.match(await page.textContent('#summary-note'), new RegExp(`tokens ${cal}\\.\\.${cal + TOKENS}`));
    const dir = path.join(tmp, what);
    cliCompress(dir, cal, ['--method', method, '--budget', budget, '--budget-mode', mode, '--refine-steps', String(refine)]);
    await sameRanks(dir);
    // the allocation check (activation-aware factors under a mode other than the same fraction each): the page found
    // what the CLI found, and says it
    const check = JSON.parse(fs.readFileSync(path.join(dir, 'compression_report.json'), 'utf8')).allocation_check;
    const kept = await page.$eval('#summary', (e) => e.dataset.allocationKept);
    assert.equal(kept, check ? String(check.kept_mode) : '', `${what}: the allocation check, page and CLI`);
    if (check) assert.match(await page.textContent('#summary-note'), /Allocation checked on the first \d+ calibration tokens/);
    const want = cliEval(dir, cal);
    const got = await summary();
    await exportMatchesPage(what, got, cal);
    sameAsCli(got, want, what, rel, flips, relMse);
    console.log(`  ${what}: cosine ${got.cosine} (CLI ${want.cosine.toFixed(4)}), ppl ${got.ppl_original} → ${got.ppl_compressed} (CLI ${want.ppl_compressed.toFixed(2)})`);
    return got;
  };

  step('the loss allocation (activation-aware, 20% of linear parameters, 256 calibration tokens): the summary equals the CLI\'s');
  await newMethodAgainstCli('whitened-loss', 'whitened', '0.2', 'loss', 256);

  // Group-wise codes: the page's compression and the CLI's, the same codes up to the rounding of wasm against native
  // arithmetic (round-to-nearest takes the same f16 scales and codes from the same f32 weights; GPTQ's f64 updates
  // may move a code that lies on a rounding boundary), evaluated on the same tokens; the page's export read by the CLI
  // gives the page's figures.
  const groupedAgainstCli = async (what, method, bits, group, cal, rel, flips = 0, relMse = rel) => {
    await newMethod(method, '', 'energy', cal);
    await page.selectOption('#bits', String(bits));
    await page.fill('#group', String(group));
    assert.equal(await clickJob('#compress', ['done', 'error'], 900000), 'done', await errorText());
    const skip = method === 'gptq' ? cal : 0;
    assert.match(await page.textContent('#summary-note'), skip ? new RegExp(`tokens ${skip}\\.\\.${skip + TOKENS}`) : new RegExp(`first ${TOKENS} tokens`));
    assert.match(await page.textContent('#summary-note'), new RegExp(`${(bits + 16 / group).toFixed(2)} bits per parameter`));
    const dir = path.join(tmp, what);
    cliCompress(dir, cal, ['--method', method, '--bits', String(bits), '--group', String(group)]);
    const want = cliEval(dir, skip);
    const got = await summary();
    await exportMatchesPage(what, got, skip);
    sameAsCli(got, want, what, rel, flips, relMse);
    console.log(`  ${what}: cosine ${got.cosine} (CLI ${want.cosine.toFixed(4)}), ppl ${got.ppl_original} → ${got.ppl_compressed} (CLI ${want.ppl_compressed.toFixed(2)})`);
  };
  step('group-wise quantization, INT4 in groups of 64 (round-to-nearest) and INT3 in groups of 32 (GPTQ, 256 calibration tokens): the summary equals the CLI\'s, and the page\'s export read by the CLI gives the page\'s figures');
  await groupedAgainstCli('int4-g64', 'quant', 4, 64, 256);
  // GPTQ in wasm and natively: the inverse Hessian's f64 rounding moves the codes that lie on a rounding boundary, so
  // the two models differ a little; measured 2026-12-07: the logits' MSE 0.2448 in the page against 0.2485 natively
  // (1.5%), so 2% is asked of the MSE (the refit's case above, for the same reason)
  await groupedAgainstCli('gptq3-g32', 'gptq', 3, 32, 256, 2e-3, 2, 2e-2);

  step('low-rank factors as INT4 codes in groups of 32 (plain SVD, rank 32, every layer): the summary equals the CLI\'s, and the page\'s export read by the CLI gives the page\'s figures');
  {
    await newMethod('svd', '', 'energy', 256);
    await page.fill('#rank', '32');
    await page.selectOption('#quant', 'int4');
    await page.fill('#group', '32');
    assert.equal(await clickJob('#compress', ['done', 'error'], 900000), 'done', await errorText());
    assert.match(await page.textContent('#layer-errors'), /int4 groups of 32/);
    const dir = path.join(tmp, 'int4-factors');
    execFileSync(SLC, ['compress', '--input-dir', DEMO, '--output-dir', dir, '--rank', '32', '--quant-bits', '4', '--group', '32'], { stdio: 'ignore' });
    const want = cliEval(dir, 0);
    const got = await summary();
    await exportMatchesPage('int4-factors', got, 0);
    sameAsCli(got, want, 'int4-factors');
    console.log(`  INT4 factors: cosine ${got.cosine} (CLI ${want.cosine.toFixed(4)}), ppl ${got.ppl_original} → ${got.ppl_compressed} (CLI ${want.ppl_compressed.toFixed(2)}), ${got.bytes_compressed} bytes`);
    await page.selectOption('#quant', 'per-row');
  }

  step('a budget in bits per parameter (plain SVD, 2 bits, energy allocation): at most 2 bits a parameter stored, the CLI\'s --budget-bits 2 gives the same ranks and figures');
  {
    await newMethod('svd', '2', 'energy', 256);
    await page.selectOption('#budget-unit', 'bits');
    assert.equal(await clickJob('#compress', ['done', 'error'], 900000), 'done', await errorText());
    const bits = Number(/([0-9.]+) bits per parameter/.exec(await page.textContent('#summary-note'))[1]);
    assert.ok(bits <= 2 && bits > 1.8, `bits per parameter ${bits}`);
    const dir = path.join(tmp, 'bits-budget');
    execFileSync(SLC, ['compress', '--input-dir', DEMO, '--output-dir', dir, '--budget-bits', '2', '--budget-mode', 'energy'], { stdio: 'ignore' });
    await sameRanks(dir);
    const want = cliEval(dir, 0);
    const got = await summary();
    sameAsCli(got, want, 'bits-budget');
    console.log(`  2 bits a parameter: ${bits} stored, cosine ${got.cosine} (CLI ${want.cosine.toFixed(4)})`);
    await page.selectOption('#budget-unit', 'params');
  }

  step('method auto (3 bits per parameter, 256 calibration tokens): every matrix stored as the CLI\'s --method auto --budget-bits 3 stores it (a mix of GPTQ codes and factors), the same figures');
  {
    await newMethod('auto', '3', 'loss', 256);
    await page.selectOption('#budget-unit', 'bits');
    await page.fill('#group', '64');
    assert.equal(await clickJob('#compress', ['done', 'error'], 900000), 'done', await errorText());
    const bits = Number(/([0-9.]+) bits per parameter/.exec(await page.textContent('#summary-note'))[1]);
    assert.ok(bits <= 3 && bits > 2.8, `bits per parameter ${bits}`);
    const dir = path.join(tmp, 'auto');
    const report = cliCompress(dir, 256, ['--method', 'auto', '--budget-bits', '3']);
    const shown = await page.$$eval('table#layer-errors tbody tr', (rs) => Object.fromEntries(rs.map((r) => [r.dataset.name, r.children[7].textContent])));
    const differ = report.layers.filter((l) => !shown[l.name].startsWith(l.reason ? `dense — ${l.reason}` : l.storage)).map((l) => `${l.name}: page ${shown[l.name]}, CLI ${l.storage}`);
    assert.deepEqual(differ, [], 'every matrix stored as the CLI stores it');
    const kinds = (word) => report.layers.filter((l) => l.storage.includes(word)).length;
    assert.ok(kinds('groups of') > 0 && kinds('rank ') > 0, report.layers.map((l) => l.storage).join(', '));
    const want = cliEval(dir, 256);
    const got = await summary();
    // the page's figures are its export's, to the printed digit
    await exportMatchesPage('auto', got, 256);
    // GPTQ's codes in wasm and natively (the group-wise step above): a code on a rounding boundary may go either way,
    // and a 2-bit code that moves moves the logits more. Measured 2026-12-07 with the same storage for every matrix
    // (the CLI's file bit-identical from run to run): the logits' MSE 0.4373 in the page against 0.4557 natively
    // (4.0%), top-1 3 positions of 1024 apart (0.8604 against 0.8633), KL 0.05848 against 0.05874 (0.44%); cosine and
    // perplexity within 2e-3. So 6% is asked of the MSE, 4 positions of top-1 and 1% of the rest
    sameAsCli(got, want, 'auto', 1e-2, 4, 6e-2);
    console.log(`  auto at 3 bits: ${bits} stored (${kinds('groups of')} matrices as codes, ${kinds('rank ')} as factors), cosine ${got.cosine} (CLI ${want.cosine.toFixed(4)})`);
    await page.selectOption('#budget-unit', 'params');
  }

  // The refit solves each matrix on the inputs the already-refitted blocks give it, so wasm's and native rounding
  // compound block after block. With fewer calibration tokens than c_proj's 1024 inputs its least squares is
  // underdetermined and the two drift apart (256 tokens: the same ranks, errors equal to 4 digits, logits cosine
  // 0.9186 in wasm vs 0.9146 natively); with 2048 they agree to 0.25% in perplexity (measured 77.44 vs 77.62 without
  // the refit's ridge; with it 69.25 vs 69.31, cosine 0.9720 vs 0.9722, and top-1 3 of the 1024 positions apart:
  // 0.5527 vs 0.5557), so 0.5% is asked, and for top-1 0.5% or 4 positions. The native side's rounding also depends on
  // the host's CPU (its gemm picks its kernels at run time): the same code gave the CLI 69.31 on one CI host and 69.34
  // on another (2026-12-02, an AMD EPYC with AVX2 only), the page 69.25 on both; there the logits' MSE, a squared
  // difference, measured 2.829 in the page against 2.810 natively (0.68%; perplexity 0.13%, KL 0.09%), so 1.5% is
  // asked of the MSE.
  step('the sequential refit (20% of linear parameters, same fraction each, 2048 calibration tokens): the summary equals the CLI\'s to 0.5%');
  const refit = await newMethodAgainstCli('refit-proportional', 'refit', '0.2', 'proportional', 2048, 5e-3, 4, 1.5e-2);

  // The block-level refinement: Adam steps on each block's factors after its refit, one step per worker call, each
  // on the progress bar. Two steps per block keep CI short; the same tolerances as the refit (the steps are small:
  // each factor moves by about 10⁻³ of its root-mean-square entry).
  step('the refit with 2 refinement steps per block: each step on the progress bar, the summary equals the CLI\'s to 0.5%');
  const seen = [];
  const polling = setInterval(async () => {
    try { seen.push(await page.textContent('#progress-text')); } catch { /* the page is busy */ }
  }, 100);
  const refined = await newMethodAgainstCli('refit-refined', 'refit', '0.2', 'proportional', 2048, 5e-3, 4, 1.5e-2, 2);
  clearInterval(polling);
  assert.ok(seen.some((t) => /refine: block \d+\/8, step [12]\/2/.test(t || '')), `a refinement step on the progress bar: ${[...new Set(seen)].slice(-5)}`);
  assert.notEqual(refined.ppl_compressed, refit.ppl_compressed, 'the refinement changed the model');
  const report = JSON.parse(fs.readFileSync(path.join(tmp, 'refit-refined', 'compression_report.json'), 'utf8'));
  assert.equal(report.layers.filter((l) => /^refined with its block/.test(l.reason || '')).length, 48, 'the CLI refined every block matrix');

  step('a quality target (cosine ≥ 0.95, budget to 0.1): the page walks the CLI\'s path and keeps its budget');
  {
    await newMethod('whitened', '', 'proportional', 256);
    await page.selectOption('#target-metric', 'cosine');
    await page.fill('#target-value', '0.95');
    await page.fill('#target-tolerance', '0.1');
    assert.equal(await clickJob('#compress', ['done', 'error'], 900000), 'done', await errorText());
    const dir = path.join(tmp, 'target');
    const report = cliCompress(dir, 256, ['--method', 'whitened', '--budget-mode', 'proportional', '--target-cosine', '0.95', '--target-tolerance', '0.1']);
    const rows = await page.$$eval('#target-path tbody tr', (rs) => rs.map((r) => [...r.children].map((c) => c.textContent)));
    assert.equal(rows.length, report.target_path.length, 'one row per compression tried');
    rows.forEach((r, i) => {
      const p = report.target_path[i];
      assert.equal(r[0], p.budget.toFixed(4), `budget tried at step ${i}`);
      assert.ok(Math.abs(Number(r[2]) - p.cosine) <= 2e-4, `cosine at budget ${r[0]}: page ${r[2]} vs CLI ${p.cosine}`);
      assert.equal(r[5].startsWith('yes'), p.cosine >= 0.95);
    });
    const kept = Number(await page.$eval('#summary', (e) => e.dataset.targetBudget));
    assert.equal(kept, report.policy.budget, 'the kept budget is the CLI\'s');
    assert.equal(rows.filter((r) => r[5].endsWith('(kept)')).length, 1);
    sameAsCli(await summary(), cliEval(dir, 256), 'target');
    await page.screenshot({ path: path.join(OUT, 'target.png'), fullPage: true });
    await page.selectOption('#target-metric', '');
    await page.fill('#eval-window', String(WINDOW));
  }
  await page.selectOption('#preset', 'default');

  // "Better" is closer to the original model: a higher logits cosine and a lower KL, both (the issue's own comparison
  // was the cosine). Perplexity on 1024 tokens is not a ranking between near-lossless settings: measured 2026-12-07,
  // round-to-nearest INT4 47.39 against GPTQ's 47.75 and INT8's 47.53, while INT4's cosine (0.9988 against 0.9993) and
  // KL are further from the original than GPTQ's; it is printed, not compared.
  step('the default preset is on the frontier: no preset the page offers stores no more bytes and is closer to the original (cosine and KL), every one measured on tokens 2048..3072');
  {
    if (!(await page.isVisible('#eval-tokens'))) await page.click('#eval-settings summary');
    await page.fill('#eval-tokens', String(TOKENS));
    await page.fill('#eval-window', String(WINDOW));
    await page.fill('#eval-skip', '2048');
    // the calibrated presets as a new user gets them: the page's own calibration length (the steps above set 256)
    await page.fill('#calibration-tokens', '2048');
    const presets = (await page.$$eval('#preset option', (os) => os.map((o) => o.value))).filter((v) => v !== 'custom');
    const measured = {};
    for (const preset of presets) {
      await page.selectOption('#preset', preset);
      assert.equal(await clickJob('#compress', ['done', 'error'], 900000), 'done', `${preset}: ${await errorText()}`);
      assert.match(await page.textContent('#summary-note'), /tokens 2048\.\.3072/, `${preset} measured on tokens 2048..3072`);
      // the quality figures exactly (the titles), not as printed; the bytes as printed (whole bytes)
      const f = await page.$$eval('#summary [data-metric]', (ns) => Object.fromEntries(ns.map((n) => [n.dataset.metric, { text: n.textContent, exact: n.title }])));
      measured[preset] = { bytes: Number(f.bytes_compressed.text), cosine: Number(f.cosine.exact), kl: Number(f.kl.exact), ppl: Number(f.ppl_compressed.exact) };
      for (const [k, v] of Object.entries(measured[preset])) assert.ok(Number.isFinite(v), `${preset}: ${k} is "${v}"`);
      console.log(`  ${preset}: ${f.bytes_compressed.text} bytes, cosine ${f.cosine.text}, KL ${f.kl.text}, perplexity ${f.ppl_compressed.text} (original ${f.ppl_original.text})`);
    }
    const d = measured.default;
    const closer = (p) => p.cosine >= d.cosine && p.kl <= d.kl && (p.cosine > d.cosine || p.kl < d.kl);
    const beaters = Object.entries(measured).filter(([k, p]) => k !== 'default' && p.bytes <= d.bytes && closer(p));
    assert.deepEqual(beaters.map(([k]) => k), [], 'presets that store no more bytes than the default and are closer to the original');
    await page.fill('#eval-skip', '');
  }

  step('the exported file is a checkpoint the CLI reads: the same figures');
  const dir2 = path.join(tmp, 'from-page');
  fs.mkdirSync(dir2);
  fs.copyFileSync(exported, path.join(dir2, 'model.safetensors'));
  const cli2 = JSON.parse(execFileSync(SLC, ['eval', '--original', DEMO, '--compressed', dir2, '--text', TEXT, '--tokens', String(TOKENS), '--window', String(WINDOW), '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
  for (const k of ['cosine', 'ppl_compressed', 'top1', 'bytes_compressed', 'layers_compressed']) assert.equal(cli2[k], cli[k], `${k} of the page's export`);

  step('uploading the demo files through input#files works like the demo button');
  await setFiles(['config.json', 'tokenizer.json', 'model.safetensors'].map((f) => path.join(DEMO, f)));
  assert.equal(await waitState(['ready', 'error']), 'ready', await errorText());
  assert.match(await page.textContent('#model-info'), /19\.44 M/);

  step('Hub folders (slow tokenizer files, pytorch_model.bin one file or sharded, files it ignores), every file uploaded: the same continuation and figures as the safetensors + tokenizer.json form');
  {
    const fixtures = path.join(ROOT, 'tests/fixtures');
    const all = (dir) => fs.readdirSync(dir).map((f) => path.join(dir, f));
    const fast = [...all(path.join(fixtures, 'tiny-fast')), path.join(ROOT, '../shared/fixtures/tiny-gpt-neo-v512/model.safetensors')];
    // the tiny model reads 128 positions: rank 4 everywhere, evaluated on 512 tokens in windows of 128
    const run = async (files) => {
      await setFiles(files);
      assert.equal(await waitState(['ready', 'error']), 'ready', await errorText());
      const info = await page.textContent('#model-info');
      await page.selectOption('#preset', 'origin-all');
      await page.fill('#eval-tokens', '512');
      await page.fill('#eval-window', '128');
      await page.fill('#prompt', 'ROMEO. O my love,');
      await jobOn(page, () => page.click('#generate'));
      const text = await page.textContent('#gen-original');
      assert.equal(await clickJob('#compress', ['done', 'error']), 'done', await errorText());
      return { info, text, figures: await summary() };
    };
    const want = await run(fast);
    assert.match(want.info, /tokenizer\s*tokenizer\.json/);
    for (const dir of ['tiny-hub', 'tiny-hub-sharded']) {
      const got = await run(all(path.join(fixtures, dir)));
      assert.match(got.info, /tokenizer\s*vocab\.json \+ merges\.txt/, dir);
      assert.match(got.info, /tied to the token embedding \(lm_head\.weight was saved as a copy of it: stored once\)/, dir);
      assert.match(got.info, /ignored\s*6 files not read: .*flax_model\.msgpack \(Flax weights\).*tf_model\.h5 \(TensorFlow weights\)/, dir);
      assert.equal(got.text, want.text, `${dir}: the greedy continuation`);
      const { seconds: _a, ...a } = got.figures;
      const { seconds: _b, ...b } = want.figures;
      assert.deepEqual(a, b, `${dir}: the evaluation figures`);
    }
    console.log(`  continuation ${JSON.stringify(want.text.slice(0, 40))}…; cosine ${want.figures.cosine}, perplexity ${want.figures.ppl_compressed}`);
    await page.fill('#eval-tokens', String(TOKENS));
    await page.fill('#eval-window', String(WINDOW));
  }

  step('a checkpoint whose weights lie past byte 4 GiB (a 4.4 GB sparse file) opens from input#files and generates like slc');
  {
    // a random-weight model of the demo's shape behind an ignored 4.4 GB buffer: every offset passes 2^32
    const big = path.join(tmp, 'big');
    execFileSync(SLC, ['synth', '--config', path.join(DEMO, 'config.json'), '--out', big, '--pad-bytes', '4400000000'], { stdio: 'ignore' });
    assert.ok(fs.statSync(path.join(big, 'model.safetensors')).size > 2 ** 32 + 75e6);
    const want = JSON.parse(execFileSync(SLC, ['generate', '--model', big, '--prompt', 'ROMEO. O my love,', '--max-new-tokens', '30', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
    await setFiles(['config.json', 'tokenizer.json', 'model.safetensors'].map((f) => path.join(big, f)));
    assert.equal(await waitState(['ready', 'error']), 'ready', await errorText());
    assert.match(await page.textContent('#model-info'), /19\.44 M/);
    await page.fill('#prompt', 'ROMEO. O my love,');
    await jobOn(page, () => page.click('#generate'));
    assert.equal(await page.textContent('#gen-original'), want.text, 'the original read past 4 GiB continues as slc generate does');
    fs.rmSync(big, { recursive: true, force: true });
  }

  step('a weight file without config.json is refused with a sentence naming it');
  await setFiles([path.join(DEMO, 'model.safetensors')]);
  assert.equal(await waitState(['error', 'ready']), 'error');
  assert.match(await errorText(), /config\.json/);

  step('a model too large to run here can still be compressed and exported (heap limited to 40 MB)');
  const small = await context.newPage();
  await small.goto(server.url + '?memory=40000000');
  await small.waitForFunction(() => /memory limited/.test(document.querySelector('#status-text').textContent));
  await jobOn(small, () => small.click('#load-demo'));
  assert.equal(await small.$eval('#status', (e) => e.dataset.state), 'ready', await small.textContent('#error'));
  assert.match(await small.textContent('#model-info'), /not enough memory/);
  assert.ok(await small.$eval('#generate', (b) => b.disabled), 'nothing to generate with');
  await small.selectOption('#preset', 'origin-all');
  await small.fill('#rank', '32');
  await jobOn(small, () => small.click('#compress'));
  assert.equal(await small.$eval('#status', (e) => e.dataset.state), 'done', await small.textContent('#error'));
  const sm = await small.$$eval('#summary [data-metric]', (ns) => Object.fromEntries(ns.map((n) => [n.dataset.metric, n.textContent])));
  assert.equal(sm.cosine, '–');
  assert.match(await small.textContent('#summary-note'), /Not evaluated: not enough memory: evaluating with the original read from its file .* needs about [0-9.]+ [GM]i?B/);
  assert.equal(sm.layers_compressed, '48');
  const bigDownload = small.waitForEvent('download');
  await small.click('#export');
  const big = path.join(tmp, 'from-small.safetensors');
  await (await bigDownload).saveAs(big);
  const dir3 = path.join(tmp, 'from-small');
  fs.mkdirSync(dir3);
  fs.copyFileSync(big, path.join(dir3, 'model.safetensors'));
  const cli3 = JSON.parse(execFileSync(SLC, ['eval', '--original', DEMO, '--compressed', dir3, '--text', TEXT, '--tokens', '512', '--window', '512', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
  assert.equal(cli3.layers_compressed, 48);
  assert.equal(cli3.bytes_compressed, Number(sm.bytes_compressed));
  await small.close();

  step('memory: the original kept in f16 when f32 does not fit (heap limited to 100 MB), and it still generates');
  {
    const half = await context.newPage();
    await half.goto(server.url + '?memory=100000000');
    await half.waitForFunction(() => /memory limited/.test(document.querySelector('#status-text').textContent));
    await jobOn(half, () => half.click('#load-demo'));
    assert.equal(await half.$eval('#status', (e) => e.dataset.state), 'ready', await half.textContent('#error'));
    assert.match(await half.textContent('#model-info'), /f16\/bf16 kept as stored: f32 would not fit/);
    await half.fill('#prompt', 'ROMEO. O my love,');
    await jobOn(half, () => half.click('#generate'));
    assert.equal(await half.textContent('#gen-original'), ROMEO_CONTINUATION);
    await half.close();
  }

  step('memory: a compressed checkpoint too large for the heap (limited to 30 MB) is refused with the figures');
  {
    const tiny = await context.newPage();
    await tiny.goto(server.url + '?memory=30000000');
    await tiny.waitForFunction(() => /memory limited/.test(document.querySelector('#status-text').textContent));
    await jobOn(tiny, () => tiny.setInputFiles('#files', [exported]));
    assert.equal(await tiny.$eval('#status', (e) => e.dataset.state), 'error');
    assert.match(await tiny.textContent('#error'), /not enough memory: the compressed model needs about [0-9.]+ [GM]iB, and only [0-9.]+ [GM]iB of this tab's [0-9.]+ [GM]iB is free/);
    await tiny.close();
  }

  step('large type for projectors');
  await page.click('#large-type');
  await page.screenshot({ path: path.join(OUT, 'large-type.png') });
  console.log('page end-to-end: ok (screenshots in tests/e2e/out/)');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  server.close();
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
