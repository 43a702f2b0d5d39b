// Benchmark: greedy decode speed of the demo model in the page's worker (headless Chromium), as the page reports it
// (tokens after the first, KV cache). Prints figures; asserts nothing about time.
//   node tests/e2e/bench.mjs [tokens=128] [runs=3]
import { chromium } from 'playwright-core';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tokens = Number(process.argv[2] || 128);
const runs = Number(process.argv[3] || 3);
const server = await serve(ROOT);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
try {
  const page = await browser.newPage();
  await page.goto(server.url);
  const waitState = (want) => page.waitForFunction((w) => w.includes(document.querySelector('#status').dataset.state), want, { timeout: 600000 });
  await page.click('#load-demo');
  await waitState(['ready']);
  await page.fill('#prompt', 'ROMEO. O my love,');
  await page.click('#gen-settings summary');
  await page.fill('#max-new-tokens', String(tokens));
  // run past the end-of-text token so every run decodes the same number of tokens
  await page.uncheck('#stop-at-eos');
  let best = 0;
  for (let r = 0; r < runs; r++) {
    await page.click('#generate');
    await waitState(['done', 'error']);
    const rate = parseFloat(await page.textContent('#rate-original'));
    console.log(`run ${r}: ${rate.toFixed(1)} tokens/s`);
    best = Math.max(best, rate);
  }
  console.log(`decode neo-bard-8l in headless Chromium (wasm, simd128, 1 worker): best ${best.toFixed(1)} tokens/s over ${runs} runs of ${tokens} tokens`);
} finally {
  await browser.close();
  server.close();
}
