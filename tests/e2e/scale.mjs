// Benchmarks at the published GPT-Neo shapes in headless Chromium (wasm + simd128). Prints figures only; the
// numbers go to BENCHMARKS.md with the command that printed them (`./build.sh bench` runs them all).
//   node tests/e2e/scale.mjs svd [MxN ...]            randomized SVD at rank 128 in a worker, stage by stage,
//                                                      beside a plain f32 product of the same shape (SVD_OVERSAMPLE,
//                                                      SVD_ITERS override the pipeline's settings)
//   node tests/e2e/scale.mjs model DIR [tokens=512]   DIR's files through input#files: compress at rank 128 on
//                                                      every layer, evaluate on `tokens`, generate side by side
import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [what, ...args] = process.argv.slice(2);
const server = await serve(ROOT);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'] });
const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;
let failed = false;
try {
  const page = await browser.newPage();
  if (what === 'svd') {
    await page.goto(server.url);
    const shapes = args.length ? args : ['768x768', '768x3072', '2048x2048', '2048x8192'];
    for (const shape of shapes) {
      const [m, n] = shape.split('x').map(Number);
      // one worker of its own, importing the page's wasm package
      const setting = (v) => (v === undefined ? undefined : Number(v));
      const [os, q] = [setting(process.env.SVD_OVERSAMPLE), setting(process.env.SVD_ITERS)];
      // a worker file of the same origin (the page's Content-Security-Policy admits no other)
      const p = await page.evaluate(async ([m, n, os, q, src]) => {
        const w = new Worker(src, { type: 'module' });
        const out = await new Promise((resolve) => { w.onmessage = (e) => resolve(e.data); w.postMessage([m, n, os, q]); });
        w.terminate();
        return out;
      }, [m, n, os, q, new URL('tests/e2e/svd-worker.mjs', server.url).href]);
      if (p.error) throw new Error(p.error);
      const stages = p.stages.map(([s, t]) => `${s} ${t.toFixed(3)}`).join(', ');
      console.log(`svd ${shape} rank 128 (wasm, headless Chromium, 1 worker): randomized ${p.randomized_seconds.toFixed(3)} s [${stages}] = ${(p.randomized_seconds / p.matmul_seconds).toFixed(2)} f32 products of ${p.matmul_seconds.toFixed(3)} s (faer; candle's ${p.candle_seconds.toFixed(3)} s), ${p.products} units (oversampling ${p.oversample}, ${p.power_iters} iterations); error ${p.err_randomized.toFixed(4)}`);
      if (p.narrow.length) console.log(`  products, median of 7 interleaved rounds: ${p.narrow.map(([s, t]) => `${s} ${t.toFixed(4)}`).join(', ')}`);
    }
  } else if (what === 'model') {
    const dir = path.resolve(args[0]);
    const tokens = Number(args[1] || 512);
    const jobs = () => page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
    const job = async (action, timeout = 3600000) => {
      const n = await jobs();
      const t = Date.now();
      await action();
      await page.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout });
      const state = await page.$eval('#status', (e) => e.dataset.state);
      if (state === 'error') throw new Error(await page.textContent('#error'));
      return (Date.now() - t) / 1000;
    };
    await page.goto(server.url);
    await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle');
    const files = fs.readdirSync(dir).filter((f) => /^(config\.json|tokenizer\.json|.*\.safetensors|.*\.index\.json)$/.test(f));
    const open = await job(() => page.setInputFiles('#files', files.map((f) => path.join(dir, f))));
    console.log(`${dir}: opened in ${open.toFixed(1)} s — ${(await page.$$eval('#model-info dd, #model-info dt', (ns) => ns.map((n) => n.textContent.trim()).join(' | ')))}`);
    await page.selectOption('#method', 'svd'); // plain SVD at a rank (the page's default is GPTQ)
    await page.fill('#rank', '128');
    await page.fill('#skip', '');
    await page.fill('#min-dim', '0');
    await page.click('#eval-settings summary');
    await page.fill('#eval-tokens', String(tokens));
    await page.fill('#eval-window', String(Math.min(tokens, 512)));
    const all = await job(() => page.click('#compress'));
    const d = await page.$eval('#summary', (e) => ({ ...e.dataset }));
    const heaps = (d.workerHeaps || '').split(',').map(Number);
    console.log(`compress (rank 128, every layer) ${d.compressSeconds} s on ${d.compressWorkers} worker(s); heap: coordinator ${mib(heaps[0])}, helpers ${heaps.slice(1).map(mib).join(', ') || '–'}; evaluate ${tokens} tokens ${d.evalSeconds || '–'} s; whole job ${all.toFixed(1)} s`);
    console.log(`  ${(await page.textContent('#summary-note')).trim()}`);
    await page.fill('#prompt', 'The meaning of life is');
    await page.click('#gen-settings summary');
    await page.fill('#max-new-tokens', '12');
    await page.uncheck('#stop-at-eos');
    // the run starts generating and ends done (other jobs, e.g. a plot's spectrum, may end meanwhile)
    const t = Date.now();
    await page.click('#generate');
    const state = () => page.$eval('#status', (e) => e.dataset.state);
    // a job the page started itself (the first layer's spectrum, an exact SVD) may run first: wait for the start
    while (await state() !== 'generating' && Date.now() - t < 600000) await new Promise((r) => setTimeout(r, 100));
    const started = (Date.now() - t) / 1000;
    if (started > 1) console.log(`  (generation started after ${started.toFixed(1)} s: the page's own job ran first)`);
    // to its end: the status back to done, no error (ten minutes at most)
    while (await state() === 'generating' && Date.now() - t < 600000 + started * 1000) await new Promise((r) => setTimeout(r, 500));
    const end = await state();
    if (end === 'error') throw new Error(await page.textContent('#error'));
    if (end !== 'done') throw new Error(`the generation did not end: the status is "${end}" after ${((Date.now() - t) / 1000).toFixed(0)} s`);
    if (!(await page.isHidden('#error'))) throw new Error(`an error is shown: ${await page.textContent('#error')}`);
    const gen = (Date.now() - t) / 1000 - started;
    const rate = async (w) => (await page.textContent(`#rate-${w}`)).trim();
    console.log(`generate 12 tokens side by side in ${gen.toFixed(1)} s: original ${await rate('original')}, compressed ${await rate('compressed')}; ${(await page.textContent('#gen-note')).trim()}`);
  } else {
    throw new Error('usage: node tests/e2e/scale.mjs svd [MxN ...] | model DIR [tokens]');
  }
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
