// Runs compared: every run of the session kept (policy, summary, layer table, generation), in a table that sorts,
// with any two side by side; the size-vs-quality plot's points pick runs too. Rendering only: the runs are what the
// worker returned.
import * as plots from './plots.js';

const KEYS = {
  n: (r) => r.n, policy: (r) => r.policy, cosine: (r) => r.ev.cosine, top1: (r) => r.ev.top1,
  ppl: (r) => r.ev.ppl_compressed, kl: (r) => r.ev.kl, linear: (r) => r.linear.after, total: (r) => r.ev.bytes_compressed,
  seconds: (r) => r.seconds,
};
// which way is better, for the deltas of the second run against the first
const HIGHER_IS_BETTER = { cosine: true, top1: true, ppl: false, kl: false, linear: false, total: false, seconds: false };

export class Runs {
  /** @param {{table: HTMLTableElement, compare: HTMLElement, plot: SVGSVGElement, fmt: {bytes: (b: number) => string, pct: (x: number) => string, number: (name: string, v: number) => string}}} o */
  constructor({ table, compare, plot, fmt }) {
    this.table = table;
    this.compare = compare;
    this.plot = plot;
    this.fmt = fmt;
    /** @type {any[]} */
    this.list = [];
    /** @type {number[]} */
    this.selected = [];
    this.sort = { key: 'n', dir: 1 };
    for (const th of /** @type {NodeListOf<HTMLElement>} */ (table.querySelectorAll('th[data-key]'))) {
      th.querySelector('button').addEventListener('click', () => {
        this.sort = { key: th.dataset.key, dir: this.sort.key === th.dataset.key ? -this.sort.dir : 1 };
        this.render();
      });
    }
  }

  clear() {
    this.list = [];
    this.selected = [];
    this.render();
  }

  /** A finished run: {policy (text), ev (EvalSummary), linear: {before, after}, untouched, seconds, layers}. */
  add(run) {
    const r = { ...run, n: this.list.length + 1, generation: null };
    this.list.push(r);
    this.render();
    return r;
  }

  last() {
    return this.list[this.list.length - 1] || null;
  }

  /** The continuation `which` model gave `prompt` after run `r` (the original's is the same for every run). */
  setGeneration(r, prompt, which, text) {
    if (!r) return;
    if (!r.generation || r.generation.prompt !== prompt) r.generation = { prompt, original: null, compressed: null };
    r.generation[which] = text;
    this.render();
  }

  // select run n (a third selection lets go of the oldest)
  toggle(n) {
    const i = this.selected.indexOf(n);
    if (i >= 0) this.selected.splice(i, 1);
    else {
      this.selected.push(n);
      if (this.selected.length > 2) this.selected.shift();
    }
    this.render();
    const row = this.table.querySelector(`tr[data-run="${n}"]`);
    if (row) row.scrollIntoView({ block: 'nearest' });
  }

  render() {
    const { bytes, pct, number } = this.fmt;
    const { key, dir } = this.sort;
    const rows = this.list.slice().sort((a, b) => {
      const x = KEYS[key](a), y = KEYS[key](b);
      return x === y ? 0 : (x < y ? -1 : 1) * dir;
    });
    const body = this.table.querySelector('tbody');
    body.replaceChildren(...rows.map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.run = String(r.n);
      tr.classList.toggle('sel', this.selected.includes(r.n));
      const box = Object.assign(document.createElement('input'), { type: 'checkbox', checked: this.selected.includes(r.n) });
      box.setAttribute('aria-label', `compare run ${r.n}`);
      box.addEventListener('change', () => this.toggle(r.n));
      const td = document.createElement('td');
      td.append(box);
      tr.append(td);
      const cells = [
        [`#${r.n}`, 'num'], [r.policy, 'policy'], [r.ev.cosine.toFixed(4), 'num'], [pct(r.ev.top1), 'num'],
        [number('ppl', r.ev.ppl_compressed), 'num'], [number('kl', r.ev.kl), 'num'],
        [`${bytes(r.linear.before)} → ${bytes(r.linear.after)}`, 'num'], [bytes(r.ev.bytes_compressed), 'num'],
        [r.seconds.toFixed(1), 'num'],
      ];
      for (const [text, cls] of cells) tr.append(Object.assign(document.createElement('td'), { textContent: text, className: cls }));
      return tr;
    }));
    for (const th of /** @type {NodeListOf<HTMLElement>} */ (this.table.querySelectorAll('th[data-key]'))) {
      th.setAttribute('aria-sort', th.dataset.key === key ? (dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    const points = this.list.map((r) => ({ n: r.n, bytes: r.ev.bytes_compressed, cosine: r.ev.cosine, bytes_original: r.ev.bytes_original,
      label: `#${r.n}: ${r.policy} — cosine ${r.ev.cosine.toFixed(4)}, ppl ${r.ev.ppl_compressed.toFixed(2)}, ${bytes(r.ev.bytes_compressed)}` }));
    plots.runs(this.plot, points, { selected: this.list.map((r, i) => (this.selected.includes(r.n) ? i : -1)).filter((i) => i >= 0), onPick: (i) => this.toggle(this.list[i].n) });
    this.renderCompare();
  }

  renderCompare() {
    const pair = this.selected.map((n) => this.list.find((r) => r.n === n)).filter(Boolean);
    this.compare.hidden = pair.length !== 2;
    this.compare.replaceChildren();
    if (pair.length !== 2) return;
    const { bytes, pct, number } = this.fmt;
    const [a, b] = pair;
    /** @type {[string, string, (v: number) => string][]} */
    const metrics = [
      ['logits cosine', 'cosine', (v) => v.toFixed(4)], ['top-1', 'top1', pct], ['perplexity', 'ppl', (v) => number('ppl', v)],
      ['KL', 'kl', (v) => number('kl', v)], ['linear layers', 'linear', bytes], ['all tensors', 'total', bytes],
      ['time (s)', 'seconds', (v) => v.toFixed(1)],
    ];
    for (const r of pair) {
      const box = Object.assign(document.createElement('div'), { className: 'run' });
      box.dataset.run = String(r.n);
      box.append(Object.assign(document.createElement('h3'), { textContent: `Run #${r.n}` }),
        Object.assign(document.createElement('p'), { className: 'small', textContent: r.policy }));
      const t = document.createElement('table');
      for (const [label, k, f] of metrics) {
        const tr = document.createElement('tr');
        tr.dataset.metric = k;
        const v = KEYS[k](r);
        tr.append(Object.assign(document.createElement('th'), { scope: 'row', textContent: label }), Object.assign(document.createElement('td'), { className: 'num', textContent: f(v) }));
        if (r === b) {
          const d = v - KEYS[k](a);
          const better = HIGHER_IS_BETTER[k] ? d > 0 : d < 0;
          const delta = Object.assign(document.createElement('td'), { className: `num delta ${d === 0 ? '' : better ? 'better' : 'worse'}`,
            textContent: d === 0 ? '=' : `${d > 0 ? '+' : '−'}${f(Math.abs(d))}` });
          tr.append(delta);
        }
        t.append(tr);
      }
      box.append(t);
      const g = r.generation;
      box.append(Object.assign(document.createElement('p'), { className: 'muted small', textContent: g ? `Continuation of ${JSON.stringify(g.prompt)}:` : 'No generation after this run.' }));
      if (g) box.append(Object.assign(document.createElement('pre'), { className: 'continuation', textContent: g.compressed ?? '' }));
      this.compare.append(box);
    }
    // the two layer tables, matrix by matrix
    const wrap = Object.assign(document.createElement('div'), { className: 'table-wrap layers' });
    const t = document.createElement('table');
    t.createCaption().textContent = `Every matrix in run #${a.n} and run #${b.n}: rank, error after INT8, bytes.`;
    const head = t.createTHead().insertRow();
    for (const h of ['matrix', `#${a.n} rank`, `#${a.n} error`, `#${a.n} bytes`, `#${b.n} rank`, `#${b.n} error`, `#${b.n} bytes`]) {
      head.append(Object.assign(document.createElement('th'), { scope: 'col', textContent: h }));
    }
    const body = t.createTBody();
    const byName = new Map(b.layers.map((l) => [l.name, l]));
    for (const la of a.layers) {
      const lb = byName.get(la.name) || {};
      const tr = body.insertRow();
      for (const [v, cls] of [[la.name.replace(/^transformer\./, '').replace(/\.weight$/, ''), ''], [la.rank ?? 'dense', 'num'], [pct(la.err_stored), 'num'], [bytes(la.bytes_after), 'num'],
        [lb.rank ?? 'dense', 'num'], [pct(lb.err_stored), 'num'], [bytes(lb.bytes_after), 'num']]) {
        tr.append(Object.assign(document.createElement('td'), { textContent: String(v), className: cls }));
      }
    }
    wrap.append(t);
    this.compare.append(wrap);
  }
}
