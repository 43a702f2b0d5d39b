// Where the page's workers spend their time: V8's sampling profiler in every worker during one job, self time summed
// by function (wasm functions by their Rust names). A developer's tool; it prints, asserts nothing.
//   node tests/e2e/profile.mjs DIR [tokens=2048] [top=40]
// DIR's files go through input#files; a first compression with evaluation starts the helpers, the second is profiled.
import { chromium } from 'playwright-core';
import { ws as WebSocket } from 'playwright-core/lib/utilsBundle';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [dirArg, tokensArg, topArg] = process.argv.slice(2);
const dir = path.resolve(dirArg);
const tokens = Number(tokensArg || 2048);
const top = Number(topArg || 40);
const PORT = 9339;
const server = await serve(ROOT);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', `--remote-debugging-port=${PORT}`] });
try {
  const page = await browser.newPage();
  const jobs = () => page.$eval('#status', (e) => Number(e.dataset.jobs || 0));
  const job = async (action) => {
    const n = await jobs();
    const t = Date.now();
    await action();
    await page.waitForFunction((k) => Number(document.querySelector('#status').dataset.jobs || 0) > k, n, { timeout: 3600000 });
    if (await page.$eval('#status', (e) => e.dataset.state) === 'error') throw new Error(await page.textContent('#error'));
    return (Date.now() - t) / 1000;
  };
  await page.goto(server.url);
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'idle');
  const files = fs.readdirSync(dir).filter((f) => /^(config\.json|tokenizer\.json|.*\.safetensors|.*\.index\.json)$/.test(f));
  await job(() => page.setInputFiles('#files', files.map((f) => path.join(dir, f))));
  await page.selectOption('#method', 'svd'); // plain SVD at a rank (the page's default is GPTQ)
  await page.fill('#skip', '');
  await page.fill('#min-dim', '0');
  await page.click('#eval-settings summary');
  await page.fill('#eval-tokens', String(tokens));
  await page.fill('#eval-window', String(Math.min(tokens, 512)));
  await page.fill('#rank', '120'); // a different setting, so that the profiled job is a new one
  console.log(`warm-up job ${(await job(() => page.click('#compress'))).toFixed(1)} s`);
  await page.fill('#rank', '128');

  // the browser's own endpoint: every worker is a target to attach to
  const version = await (await fetch(`http://127.0.0.1:${PORT}/json/version`)).json();
  const sock = new WebSocket(version.webSocketDebuggerUrl, { perMessageDeflate: false, maxPayload: 1 << 30 });
  await new Promise((r) => sock.once('open', r));
  let id = 0;
  const waiting = new Map();
  sock.on('message', (data) => {
    const m = JSON.parse(data.toString());
    if (m.id && waiting.has(m.id)) { waiting.get(m.id)(m); waiting.delete(m.id); }
  });
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    const mid = ++id;
    waiting.set(mid, (m) => (m.error ? reject(new Error(`${method}: ${m.error.message}`)) : resolve(m.result)));
    sock.send(JSON.stringify({ id: mid, method, params, ...(sessionId ? { sessionId } : {}) }));
  });
  const { targetInfos } = await send('Target.getTargets');
  const workers = targetInfos.filter((t) => t.type === 'worker');
  const sessions = [];
  for (const w of workers) {
    const { sessionId } = await send('Target.attachToTarget', { targetId: w.targetId, flatten: true });
    await send('Profiler.enable', {}, sessionId);
    await send('Profiler.setSamplingInterval', { interval: 500 }, sessionId);
    await send('Profiler.start', {}, sessionId);
    sessions.push([w, sessionId]);
  }
  console.log(`profiling ${sessions.length} worker(s)`);
  // the compression and its evaluation, from the click to the status leaving them (a plot's spectrum may end first)
  const state = () => page.$eval('#status', (e) => e.dataset.state);
  const t0 = Date.now();
  await page.click('#compress');
  while (!['compressing', 'evaluating'].includes(await state()) && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 20));
  while (['compressing', 'evaluating'].includes(await state())) await new Promise((r) => setTimeout(r, 100));
  const seconds = (Date.now() - t0) / 1000;
  const d = await page.$eval('#summary', (e) => ({ ...e.dataset }));
  console.log(`profiled job ${seconds.toFixed(1)} s: compress ${d.compressSeconds} s, evaluate ${d.evalSeconds} s`);
  for (const [w, sessionId] of sessions) {
    const { profile } = await send('Profiler.stop', {}, sessionId);
    const self = new Map();
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const counts = new Map();
    for (const s of profile.samples) counts.set(s, (counts.get(s) || 0) + 1);
    // the time of each sample is the delta to the next one
    const time = new Map();
    profile.samples.forEach((s, i) => time.set(s, (time.get(s) || 0) + (profile.timeDeltas[i + 1] || 0)));
    let total = 0;
    for (const [nid, t] of time) {
      const n = byId.get(nid);
      const name = n.callFrame.functionName || `(${n.callFrame.url.split('/').pop() || 'anonymous'})`;
      self.set(name, (self.get(name) || 0) + t);
      total += t;
    }
    const idle = (self.get('(idle)') || 0) + (self.get('(program)') || 0);
    // INCLUSIVE=re1,re2: the time of the samples with a frame matching each pattern on their stack
    const parent = new Map();
    for (const n of profile.nodes) for (const c of n.children || []) parent.set(c, n.id);
    const inclusive = (process.env.INCLUSIVE || '').split(',').filter(Boolean).map((p) => [p, new RegExp(p), 0]);
    for (const [nid, t] of time) {
      for (const row of inclusive) {
        for (let k = nid; k !== undefined; k = parent.get(k)) {
          if (row[1].test(byId.get(k).callFrame.functionName)) { row[2] += t; break; }
        }
      }
    }
    console.log(`\nworker ${w.url.split('/').pop()} ${w.targetId.slice(0, 8)}: ${(total / 1e6).toFixed(1)} s sampled, ${((total - idle) / 1e6).toFixed(1)} s busy`);
    // a timeline: per second, how busy, and the two functions that took most of it
    if (process.env.TIMELINE) {
      const buckets = [];
      let at = profile.startTime;
      profile.samples.forEach((s, i) => {
        at += profile.timeDeltas[i];
        const k = Math.floor((at - profile.startTime) / 1e6);
        const n = byId.get(s);
        const name = n.callFrame.functionName || `(${n.callFrame.url.split('/').pop() || 'anonymous'})`;
        const b = (buckets[k] ||= new Map());
        b.set(name, (b.get(name) || 0) + 1);
      });
      buckets.forEach((b, k) => {
        const all = [...b.values()].reduce((x, y) => x + y, 0);
        const busy = all - (b.get('(idle)') || 0) - (b.get('(program)') || 0);
        const tops = [...b].filter(([n]) => n !== '(idle)' && n !== '(program)').sort((x, y) => y[1] - x[1]).slice(0, 2)
          .map(([n, c]) => `${n.replace(/::h[0-9a-f]{16}$/, '').slice(-60)} ${(100 * c / all).toFixed(0)}%`);
        console.log(`  t=${String(k).padStart(3)} s busy ${(100 * busy / all).toFixed(0).padStart(3)}%  ${tops.join(' · ')}`);
      });
    }
    for (const [p, , t] of inclusive) console.log(`  inclusive ${(t / 1e6).toFixed(2).padStart(7)} s  /${p}/`);
    for (const [name, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      console.log(`  ${(t / 1e6).toFixed(2).padStart(7)} s ${(100 * t / total).toFixed(1).padStart(5)}%  ${name.slice(0, 140)}`);
    }
  }
  sock.close();
} finally {
  await browser.close();
  server.close();
}
