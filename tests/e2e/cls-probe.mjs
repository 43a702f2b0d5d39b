import { start } from './harness.mjs';
const { server, browser } = await start();
const page = await (await browser.newContext({ viewport: { width: 1400, height: 900 } })).newPage();
page.on('pageerror', (e) => console.log('[page exception]', e.message));
page.on('console', (m) => { if (m.type() === 'error') console.log('[console]', m.text()); });
await page.addInitScript(() => {
  window.__shifts = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) if (!e.hadRecentInput) window.__shifts.push({ value: e.value, sources: (e.sources || []).map((s) => s.node ? (s.node.id || s.node.className || s.node.nodeName) : '?').join(' ') }); }).observe({ type: 'layout-shift', buffered: true });
});
await page.goto(server.url);
await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle');
const jobs = () => page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
const wait = (k) => page.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) >= k, k, { timeout: 600000 });
let n = await jobs(); await page.focus('body'); await page.keyboard.press('d'); await wait(n + 1);
for (const key of process.argv.slice(2)) { n = await jobs(); await page.keyboard.press(key); await wait(n + (key === 's' ? 11 : 1)); }
const shifts = await page.evaluate(() => window.__shifts);
const by = {}; for (const e of shifts) by[e.sources] = (by[e.sources] || 0) + e.value;
console.log(shifts.length, shifts.reduce((a, e) => a + e.value, 0).toFixed(4));
console.log(Object.entries(by).sort((a, b) => b[1] - a[1]).slice(0, 12));
console.log(await page.textContent('#preview'));
await browser.close(); server.close();
