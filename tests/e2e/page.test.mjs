// End-to-end test of the page: Debian's Chromium, headless, driven by playwright-core.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OUT = path.join(ROOT, 'tests/e2e/out');
fs.mkdirSync(OUT, { recursive: true });
const ROMEO_CONTINUATION = "\nAnd I will not be my husband's son.\n\n[Exit.]\n\n[Enter RICHARD.]\n\nRICHARD.";

const server = await serve(ROOT);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.on('console', (m) => { if (m.type() === 'error') console.log('[page error]', m.text()); });
  page.on('pageerror', (e) => console.log('[page exception]', e.message));
  await page.goto(server.url);
  const state = () => page.$eval('#status', (e) => e.dataset.state);
  const waitState = async (want, timeout = 120000) => {
    await page.waitForFunction((w) => w.includes(document.querySelector('#status').dataset.state), want, { timeout });
    return state();
  };

  // load the demo model
  await page.click('#load-demo');
  assert.equal(await waitState(['ready', 'error']), 'ready', await page.textContent('#error'));

  // generate from the original model: the model card's greedy continuation
  await page.fill('#prompt', 'ROMEO. O my love,');
  await page.click('#generate');
  assert.equal(await waitState(['done', 'error']), 'done', await page.textContent('#error'));
  assert.equal(await page.textContent('#gen-original'), ROMEO_CONTINUATION);

  // uploading the same files through input#files works like the demo button
  const demo = path.join(ROOT, 'www/models/neo-bard-8l');
  await page.setInputFiles('#files', ['config.json', 'tokenizer.json', 'model.safetensors'].map((f) => path.join(demo, f)));
  assert.equal(await waitState(['ready', 'error']), 'ready', await page.textContent('#error'));

  // a file set without config.json is refused with a sentence naming it
  await page.setInputFiles('#files', [path.join(demo, 'model.safetensors')]);
  assert.equal(await waitState(['error', 'ready']), 'error');
  assert.match(await page.textContent('#error'), /config\.json/);

  await page.screenshot({ path: path.join(OUT, 'page.png'), fullPage: true });
  console.log('page end-to-end: ok (screenshot in tests/e2e/out/page.png)');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
