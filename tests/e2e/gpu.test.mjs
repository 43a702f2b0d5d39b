// The page on the GPU: headless Chromium with a WebGPU adapter (SwiftShader), beside the same page forced onto the
// CPU (?device=cpu), in one run. The demo model and an uploaded checkpoint (a GPT-Neo folder as the Hub gives it),
// each compressed with a low-rank INT8 setting and with the origin's per-tensor setting, are evaluated on both
// devices: perplexity within 1e-4 relative, cosine within 1e-5, KL within 1e-4 absolute, top-1 within 2 positions per
// 1024; greedy continuations of 32 tokens identical on both devices for both models. The page names the adapter on
// the GPU side and the CPU on the other.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { start, step, ROOT } from './harness.mjs';

const HUB = path.join(ROOT, 'tests/fixtures/tiny-hub');
// 512 tokens keep the run short on a 2-core machine; top-1 is allowed 2 positions per 1024 of them
const TOKENS = 512;

const { server, browser } = await start({ gpu: true });
let failed = false;
try {
  // the same page twice: the GPU's and the CPU's
  const open = async (query) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    const page = await context.newPage();
    page.on('console', (m) => { if (m.type() === 'error') { console.log(`[${query} console error]`, m.text()); failed = true; } });
    page.on('pageerror', (e) => { console.log(`[${query} exception]`, e.message); failed = true; });
    await page.goto(`${server.url}${query}`);
    await page.waitForFunction(() => !document.querySelector('#device').textContent.includes('starting'), null, { timeout: 60000 });
    return page;
  };
  const jobOn = async (p, action, want = ['ready', 'done', 'error'], timeout = 900000) => {
    const n = await p.$eval('#status', (e) => Number(e.dataset.jobs || 0));
    await action();
    await p.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout });
    await p.waitForFunction((w) => w.includes(document.querySelector('#status').dataset.state), want, { timeout });
    const state = await p.$eval('#status', (e) => e.dataset.state);
    assert.notEqual(state, 'error', await p.textContent('#error'));
    return state;
  };
  // every figure at full precision (each card's title holds the number as computed)
  const figures = (p) => p.$$eval('#summary [data-metric]', (ns) => Object.fromEntries(ns.map((n) => [n.dataset.metric, Number(n.title)])));
  const settings = async (p, { rank, quant, minDim }, window) => {
    await p.selectOption('#method', 'svd');
    await p.fill('#rank', String(rank));
    await p.fill('#skip', '');
    await p.selectOption('#quant', quant);
    await p.fill('#min-dim', String(minDim));
    if (!(await p.isVisible('#eval-tokens'))) await p.click('#eval-settings summary');
    await p.fill('#eval-tokens', String(TOKENS));
    await p.fill('#eval-window', String(window));
  };
  const compareFigures = (gpu, cpu, what) => {
    const rel = (a, b) => Math.abs(a - b) / Math.abs(b);
    assert.ok(rel(gpu.ppl_original, cpu.ppl_original) < 1e-4, `${what}: perplexity of the original ${gpu.ppl_original} vs ${cpu.ppl_original}`);
    assert.ok(rel(gpu.ppl_compressed, cpu.ppl_compressed) < 1e-4, `${what}: perplexity of the compressed ${gpu.ppl_compressed} vs ${cpu.ppl_compressed}`);
    assert.ok(Math.abs(gpu.cosine - cpu.cosine) < 1e-5, `${what}: cosine ${gpu.cosine} vs ${cpu.cosine}`);
    assert.ok(Math.abs(gpu.kl - cpu.kl) < 1e-4, `${what}: KL ${gpu.kl} vs ${cpu.kl}`);
    assert.ok(Math.abs(gpu.top1 - cpu.top1) * TOKENS <= 2 * TOKENS / 1024 + 1e-9, `${what}: top-1 ${gpu.top1} vs ${cpu.top1}`);
    for (const k of ['bytes_original', 'bytes_compressed', 'layers_compressed']) assert.equal(gpu[k], cpu[k], `${what}: ${k}`);
    console.log(`  ${what}: ppl ${gpu.ppl_compressed} vs ${cpu.ppl_compressed}, cosine ${gpu.cosine} vs ${cpu.cosine}, KL ${gpu.kl} vs ${cpu.kl}, top-1 ${gpu.top1} vs ${cpu.top1}`);
  };
  const continuation = async (p) => {
    if (!(await p.isVisible('#max-new-tokens'))) await p.click('#gen-settings summary');
    await p.fill('#max-new-tokens', '32');
    await p.fill('#temperature', '0');
    await jobOn(p, () => p.click('#generate'), ['done', 'error']);
    const ids = (w) => p.$$eval(`#gen-${w} span[data-id]`, (ns) => ns.map((n) => Number(n.dataset.id)));
    return { original: await ids('original'), compressed: await ids('compressed'), note: await p.textContent('#gen-note') };
  };

  const gpu = await open('');
  const cpu = await open('?device=cpu');
  step('the GPU page names the adapter, the CPU page the CPU');
  const gpuLabel = await gpu.textContent('#device');
  assert.match(gpuLabel, /^GPU: .*swiftshader.*WebGPU/i, gpuLabel);
  assert.match(await cpu.textContent('#device'), /^CPU: wasm SIMD/);
  assert.match(await cpu.getAttribute('#device', 'title'), /device=cpu/);

  const cases = [
    // (windows as long as each model reads: the tiny one's 128 positions)
    ['the demo model', 256, async (p) => jobOn(p, () => p.click('#load-demo'))],
    ['an uploaded Hub folder', 128, async (p) => jobOn(p, () => p.setInputFiles('#files', fs.readdirSync(HUB).map((f) => path.join(HUB, f))))],
  ];
  for (const [model, window, load] of cases) {
    for (const [setting, s] of [['low-rank INT8 per row', { rank: 16, quant: 'per-row', minDim: 0 }], ["the origin's per-tensor INT8", { rank: 32, quant: 'per-tensor', minDim: 0 }]]) {
      step(`${model}, ${setting}: evaluated and continued on both devices`);
      const got = {};
      for (const [name, p] of [['gpu', gpu], ['cpu', cpu]]) {
        await load(p);
        await settings(p, s, window);
        await jobOn(p, () => p.click('#compress'), ['done', 'error']);
        got[name] = { figures: await figures(p), device: await p.$eval('#summary', (e) => e.dataset.device), text: await continuation(p) };
      }
      assert.match(got.gpu.device, /^GPU: /, `${model}: evaluated on ${got.gpu.device}`);
      assert.match(got.cpu.device, /^CPU: wasm SIMD/, `${model}: evaluated on ${got.cpu.device}`);
      compareFigures(got.gpu.figures, got.cpu.figures, `${model}, ${setting}`);
      for (const w of ['original', 'compressed']) {
        assert.equal(got.gpu.text[w].length, 32, `${model}: the ${w} model's continuation on the GPU`);
        assert.deepEqual(got.gpu.text[w], got.cpu.text[w], `${model}, ${setting}: the ${w} model's 32 greedy tokens`);
      }
      assert.match(got.gpu.text.note, /Generated on GPU: /);
    }
  }
  console.log(failed ? 'FAILED (console errors above)' : 'ok: the GPU gives the CPU\'s figures and text');
} catch (err) {
  failed = true;
  console.error(err);
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
