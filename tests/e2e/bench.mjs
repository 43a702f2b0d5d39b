// Benchmark: greedy decode speed in the page's worker (headless Chromium, wasm + simd128), as the page reports it
// (tokens after the first, KV cache): the demo model and its compression at rank 32 with the MLP skipped (per-row
// INT8 factors; embedding/head and MLP kept in f16 as stored), side by side in one run. Prints figures only.
//   node tests/e2e/bench.mjs [tokens=128] [runs=3]
//   node tests/e2e/bench.mjs codes [tokens=128] [runs=3]   decode with the demo's linear layers as INT8 (per-row) and
//                                                          as INT4 in groups of 64, side by side, best of `runs` each
import { chromium } from 'playwright-core';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const codes = process.argv[2] === 'codes';
const argv = codes ? process.argv.slice(1) : process.argv;
const tokens = Number(argv[2] || 128);
const runs = Number(argv[3] || 3);
const server = await serve(ROOT);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
try {
  const page = await browser.newPage();
  // evaluation in one worker, then with helpers (one per extra core), side by side in this run
  const single = await browser.newPage();
  await single.goto(server.url + '?workers=1');
  await page.goto(server.url);
  const jobs = (p) => p.$eval('#status', (e) => Number(e.dataset.jobs || 0));
  // click, then wait for the job it starts to end
  const job = async (selector, p = page) => {
    const n = await jobs(p);
    await p.click(selector);
    await p.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout: 600000 });
  };
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  if (codes) {
    // the same prompt and tokens for both storages, each compressed then generated `runs` times, in turn
    await job('#load-demo');
    await page.click('#eval-settings summary');
    await page.fill('#eval-tokens', '512');
    await page.fill('#prompt', 'ROMEO. O my love,');
    await page.click('#gen-settings summary');
    await page.fill('#max-new-tokens', String(tokens));
    await page.uncheck('#stop-at-eos');
    const best = {};
    for (let r = 0; r < runs; r++) {
      for (const preset of ['int8', 'int4']) {
        await page.selectOption('#preset', preset);
        await job('#compress');
        await job('#generate');
        const c = parseFloat(await page.textContent('#rate-compressed'));
        console.log(`run ${r} ${preset}: ${c.toFixed(1)} tokens/s`);
        best[preset] = Math.max(best[preset] || 0, c);
      }
    }
    console.log(`decode in headless Chromium (wasm, simd128, 1 worker), best of ${runs} runs of ${tokens} tokens, every linear layer: INT8 per-row ${best.int8.toFixed(1)}, INT4 in groups of 64 ${best.int4.toFixed(1)} tokens/s (ratio ${(best.int4 / best.int8).toFixed(2)})`);
    process.exit(0);
  }
  for (const p of [single, page]) {
    await job('#load-demo', p);
    await p.fill('#rank', '32');
    await p.fill('#skip', 'mlp.c_fc,mlp.c_proj');
    await p.click('#eval-settings summary');
  }
  for (const tokens of [2048, 8192]) {
    const secs = [];
    for (const [p, name] of [[single, '1 worker'], [page, `up to ${cores} workers`]]) {
      await p.fill('#eval-tokens', String(tokens));
      await job('#compress', p);
      const d = await p.$eval('#summary', (e) => ({ c: e.dataset.compressSeconds, e: e.dataset.evalSeconds }));
      secs.push(Number(d.e));
      console.log(`${name}: compress 49 matrices ${d.c} s; evaluate ${tokens} tokens (windows of 512, both models) ${d.e} s`);
    }
    console.log(`evaluation speed-up with helpers, ${tokens} tokens: ${(secs[0] / secs[1]).toFixed(2)}x`);
  }
  await page.fill('#prompt', 'ROMEO. O my love,');
  await page.click('#gen-settings summary');
  await page.fill('#max-new-tokens', String(tokens));
  // run past the end-of-text token so every run decodes the same number of tokens
  await page.uncheck('#stop-at-eos');
  const best = { original: 0, compressed: 0 };
  for (let r = 0; r < runs; r++) {
    await job('#generate');
    const o = parseFloat(await page.textContent('#rate-original'));
    const c = parseFloat(await page.textContent('#rate-compressed'));
    console.log(`run ${r}: original ${o.toFixed(1)} tokens/s, compressed ${c.toFixed(1)} tokens/s`);
    best.original = Math.max(best.original, o);
    best.compressed = Math.max(best.compressed, c);
  }
  console.log(`decode in headless Chromium (wasm, simd128, 1 worker), best of ${runs} runs of ${tokens} tokens: original ${best.original.toFixed(1)}, compressed ${best.compressed.toFixed(1)} tokens/s (ratio ${(best.compressed / best.original).toFixed(2)})`);
  // activation-aware SVD: calibration (4 windows of 512 through the original) + whitened factors, same ranks
  await page.fill('#eval-tokens', '2048');
  await page.selectOption('#preset', 'whitened');
  await job('#compress');
  const w = await page.$eval('#summary', (e) => ({ c: e.dataset.compressSeconds, e: e.dataset.evalSeconds }));
  await page.selectOption('#preset', 'custom');
  await page.selectOption('#method', 'svd');
  await job('#compress');
  const p = await page.$eval('#summary', (e) => ({ c: e.dataset.compressSeconds, e: e.dataset.evalSeconds }));
  console.log(`rank 32, every layer: compress ${p.c} s plain SVD, ${w.c} s activation-aware (calibrated on 2048 tokens); ratio ${(w.c / p.c).toFixed(1)}x`);
} finally {
  await browser.close();
  server.close();
}
