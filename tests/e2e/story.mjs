// The origin's story as a speaker tells it, timed (a benchmark: figures only, for BENCHMARKS.md). Headless Chromium
// (wasm + simd128, the CPU path), a model's folder through input#files, then *Tell the origin's story* clicked and
// timed from the click to the story's end, step by step (each step's compression, evaluation and generation read
// off the progress bar).
//   node tests/e2e/story.mjs DIR [ROOT ...]   DIR: the model's folder (e.g. /tmp/slc-bench/125M from `slc synth`);
//                                             each ROOT is a checkout whose page is served and timed in turn, in the
//                                             same run (default: this one), e.g. a build from before a change
import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [dirArg, ...roots] = process.argv.slice(2);
const dir = path.resolve(dirArg);
const files = fs.readdirSync(dir).filter((f) => /^(config\.json|tokenizer\.json|.*\.safetensors|.*\.index\.json)$/.test(f)).map((f) => path.join(dir, f));
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'] });
let failed = false;
try {
  for (const root of roots.length ? roots.map((r) => path.resolve(r)) : [HERE]) {
    const server = await serve(root);
    const page = await browser.newPage();
    await page.goto(server.url);
    await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle');
    const jobs = () => page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
    const n = await jobs();
    await page.setInputFiles('#files', files);
    await page.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout: 3600000 });
    if (await page.$eval('#status', (e) => e.dataset.state) === 'error') throw new Error(await page.textContent('#error'));
    // what the progress bar says, with the time, while the story runs (recorded in the page: nothing is missed)
    await page.evaluate(() => {
      window.__story = [];
      const t0 = performance.now();
      const note = () => window.__story.push([performance.now() - t0, document.querySelector('#progress-text').textContent, document.querySelector('#progress-eta').textContent]);
      new MutationObserver(note).observe(document.querySelector('#progress-text'), { childList: true, characterData: true, subtree: true });
      window.__storyStart = t0;
    });
    const expect = await page.evaluate(() => (document.querySelector('#story-estimate') || {}).textContent || '');
    const t = Date.now();
    await page.click('#story');
    await page.waitForFunction(() => ['done', 'error', 'lost', 'cancelled'].includes(document.querySelector('#story-panel').dataset.told), null, { timeout: 7200000 });
    const seconds = (Date.now() - t) / 1000;
    const told = await page.$eval('#story-panel', (e) => e.dataset.told);
    if (told !== 'done') throw new Error(`the story ended ${told}: ${await page.textContent('#error')}`);
    const rows = await page.$$eval('#story-table tbody tr', (trs) => trs.map((tr) => [...tr.children].slice(0, 5).map((td) => td.textContent.trim()).join(' | ')));
    const log = await page.evaluate(() => window.__story);
    // the time spent in each task, summed from the progress bar's changes (compress, evaluate, generate…)
    const spent = {};
    for (let i = 0; i < log.length; i++) {
      const task = (log[i][1].split(' ')[0] || 'other');
      const next = i + 1 < log.length ? log[i + 1][0] : seconds * 1000;
      spent[task] = (spent[task] || 0) + (next - log[i][0]) / 1000;
    }
    console.log(`${path.basename(root)}: the origin's story on ${dir}: ${seconds.toFixed(1)} s from the click to the last row${expect ? ` (the page expected ${expect.trim()})` : ''}`);
    console.log(`  by task: ${Object.entries(spent).map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(', ')}`);
    for (const r of rows) console.log(`  ${r}`);
    if (process.env.STORY_LOG) for (const [ms, text, eta] of log) console.log(`    ${(ms / 1000).toFixed(1)} ${text} ${eta}`);
    await page.close();
    server.close();
  }
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
