// Small SVG plots (no dependencies). Each function draws into an <svg viewBox="0 0 360 200">.
const NS = 'http://www.w3.org/2000/svg';
const W = 360, H = 200, L = 44, R = 10, T = 10, B = 30;

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
  if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + 'k';
  if (a >= 10) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}

// axes with a few ticks; x and y are {min, max, log}
function frame(svg, x, y, xlabel, ylabel) {
  svg.replaceChildren();
  const sx = (v) => L + (W - L - R) * (x.log ? Math.log10(v / x.min) / Math.log10(x.max / x.min) : (v - x.min) / (x.max - x.min || 1));
  const sy = (v) => H - B - (H - T - B) * (y.log ? Math.log10(v / y.min) / Math.log10(y.max / y.min) : (v - y.min) / (y.max - y.min || 1));
  svg.append(el('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }), el('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  const ticks = (a, n) => a.log
    ? Array.from({ length: Math.floor(Math.log10(a.max)) - Math.ceil(Math.log10(a.min)) + 1 }, (_, i) => 10 ** (Math.ceil(Math.log10(a.min)) + i))
    : Array.from({ length: n + 1 }, (_, i) => a.min + (a.max - a.min) * i / n);
  for (const v of ticks(x, 4)) svg.append(el('text', { x: sx(v), y: H - B + 12, 'text-anchor': 'middle' }, fmt(v)));
  for (const v of ticks(y, 4)) svg.append(el('text', { x: L - 4, y: sy(v) + 3, 'text-anchor': 'end' }, fmt(v)));
  svg.append(el('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle' }, xlabel));
  svg.append(el('text', { x: 10, y: (T + H - B) / 2, transform: `rotate(-90 10 ${(T + H - B) / 2})`, 'text-anchor': 'middle' }, ylabel));
  return { sx, sy };
}

function path(points, cls) {
  return el('path', { class: cls, d: points.map(([a, b], i) => `${i ? 'L' : 'M'}${a.toFixed(1)},${b.toFixed(1)}`).join('') });
}

function message(svg, text) {
  svg.replaceChildren(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, text));
}

// singular values (log scale) with the kept rank marked
export function spectrum(svg, values, rank) {
  if (!values || !values.length) return message(svg, 'no spectrum for this layer');
  const pos = values.filter((v) => v > 0);
  const ymin = Math.max(Math.min(...pos), Math.max(...pos) * 1e-6);
  const s = frame(svg, { min: 1, max: values.length }, { min: ymin, max: Math.max(...pos), log: true }, 'index', 'σ');
  svg.append(path(values.map((v, i) => [s.sx(i + 1), s.sy(Math.max(v, ymin))]), 'series'));
  if (rank) {
    const x = s.sx(Math.min(rank, values.length));
    svg.append(el('line', { class: 'cut', x1: x, y1: T, x2: x, y2: H - B }), el('text', { x: x + 3, y: T + 10 }, `rank ${rank}`));
  }
}

// relative Frobenius error of the best rank-r approximation, from the spectrum, with the stored error as a dot
export function errorCurve(svg, values, rank, stored) {
  if (!values || !values.length) return message(svg, 'no spectrum for this layer');
  const sq = values.map((v) => v * v);
  const total = sq.reduce((a, b) => a + b, 0) || 1;
  let tail = total;
  const pts = [[0, 1]];
  for (let r = 1; r <= values.length; r++) { tail -= sq[r - 1]; pts.push([r, Math.sqrt(Math.max(tail, 0) / total)]); }
  const s = frame(svg, { min: 0, max: values.length }, { min: 0, max: 1 }, 'rank', 'relative error');
  svg.append(path(pts.map(([r, e]) => [s.sx(r), s.sy(e)]), 'series'));
  if (rank) {
    const x = s.sx(rank);
    svg.append(el('line', { class: 'cut', x1: x, y1: T, x2: x, y2: H - B }));
    if (stored !== null && stored !== undefined) svg.append(el('circle', { class: 'pt', cx: x, cy: s.sy(Math.min(stored, 1)), r: 4 }, undefined));
    svg.append(el('text', { x: x + 4, y: T + 10 }, `${(100 * pts[Math.min(rank, values.length)][1]).toFixed(1)}%`));
  }
}

// every run of the session: compressed bytes vs cosine; each point a button that picks its run (`onPick(i)`), the
// `selected` ones ringed
/** @param {SVGSVGElement} svg @param {any[]} list @param {{selected?: number[], onPick?: (i: number) => void}} [o] */
export function runs(svg, list, { selected = [], onPick } = {}) {
  if (!list.length) return message(svg, 'compress to add a run');
  const xs = list.map((r) => r.bytes), ys = list.map((r) => r.cosine);
  const x = { min: 0, max: Math.max(...xs, list[0].bytes_original || 0) * 1.05 };
  const y = { min: Math.min(0, ...ys), max: 1 };
  const s = frame(svg, x, y, 'bytes of the compressed checkpoint', 'logits cosine');
  if (list[0].bytes_original) {
    const ox = s.sx(list[0].bytes_original);
    svg.append(el('circle', { class: 'pt orig', cx: ox, cy: s.sy(1), r: 4 }), el('text', { x: ox - 4, y: s.sy(1) + 14, 'text-anchor': 'end' }, 'original'));
  }
  list.forEach((r, i) => {
    const c = el('circle', { class: `pt${selected.includes(i) ? ' sel' : ''}`, cx: s.sx(r.bytes), cy: s.sy(r.cosine), r: 5 });
    c.append(el('title', {}, r.label));
    if (onPick) {
      Object.entries({ tabindex: 0, role: 'button', 'aria-label': `run ${r.label}` }).forEach(([k, v]) => c.setAttribute(k, v));
      c.addEventListener('click', () => onPick(i));
      c.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onPick(i); } });
    }
    svg.append(c, el('text', { x: s.sx(r.bytes) + 5, y: s.sy(r.cosine) - 4 }, `#${r.n ?? i + 1}`));
  });
}

// A colour per recipe, in the order the explorer lists them.
const RECIPE_COLOURS = ['#1f4fb8', '#c2410c', '#17733a', '#7c3aed', '#5a5d66', '#a16207', '#be185d', '#0e7490'];

// The sweep: per recipe, quality (`metric`: 'cosine' or 'ppl_ratio') against bits per linear parameter as stored
// (codes, scales, factors: every method on one axis), a curve through its budgets; a size the shapes fix (INT8,
// group-wise codes) is one point; `current` ({bits, value}) is ringed; `original` is the dense model's bits, drawn
// as a line when it lies on the axis and named at its edge when it lies past it.
export function sweep(svg, points, { metric = 'cosine', current = null, original = null } = {}) {
  const got = points.filter((p) => p && Number.isFinite(p[metric]));
  if (!got.length) return message(svg, 'run a sweep to draw it');
  const xs = got.map((p) => p.bits_per_param).concat(current ? [current.bits] : []);
  const vs = got.map((p) => p[metric]).concat(current && Number.isFinite(current.value) ? [current.value] : []);
  const x = { min: 0, max: Math.max(...xs) * 1.1 };
  const y = metric === 'cosine'
    ? { min: Math.min(0, ...vs), max: 1 }
    : Math.max(...vs) > 10 ? { min: 1, max: Math.max(...vs) * 1.2, log: true } : { min: 1, max: Math.max(...vs) * 1.05 };
  const s = frame(svg, x, y, 'bits per linear parameter as stored', metric === 'cosine' ? 'logits cosine' : 'perplexity × original');
  const recipes = [...new Set(got.map((p) => p.recipe))];
  recipes.forEach((name, k) => {
    const colour = RECIPE_COLOURS[k % RECIPE_COLOURS.length];
    const mine = got.filter((p) => p.recipe === name).sort((a, b) => a.bits_per_param - b.bits_per_param);
    if (mine.length > 1) {
      const line = path(mine.map((p) => [s.sx(p.bits_per_param), s.sy(Math.max(p[metric], y.min))]), 'curve');
      line.setAttribute('stroke', colour);
      svg.append(line);
    }
    for (const p of mine) {
      const c = el('circle', { cx: s.sx(p.bits_per_param), cy: s.sy(Math.max(p[metric], y.min)), r: p.budget == null ? 5 : 3.5, fill: colour, 'data-recipe': name });
      c.append(el('title', {}, `${name}${p.budget ? ` at ${p.budget}` : ''}: ${metric} ${p[metric].toFixed(4)}, ${p.bits_per_param.toFixed(2)} bits per parameter (${fmt(p.layer_bytes)} B)`));
      svg.append(c);
    }
    // the legend where the curves are not: low for cosines (they sit near 1), high for perplexity ratios
    const ly = metric === 'cosine' ? H - B - 8 - 12 * (recipes.length - 1 - k) : T + 10 + 12 * k;
    svg.append(el('text', { x: W - R - 14, y: ly, 'text-anchor': 'end', fill: colour, class: 'legend' }, name));
  });
  if (original && original <= x.max) {
    const ox = s.sx(original);
    svg.append(el('line', { class: 'cut', x1: ox, y1: T, x2: ox, y2: H - B }), el('text', { x: ox - 3, y: T + 8, 'text-anchor': 'end' }, 'dense'));
  } else if (original) {
    svg.append(el('text', { x: W - R, y: T + 8, 'text-anchor': 'end' }, `dense: ${original.toFixed(0)} bits →`));
  }
  if (current && Number.isFinite(current.value)) {
    svg.append(el('circle', { class: 'ring', cx: s.sx(current.bits), cy: s.sy(Math.max(current.value, y.min)), r: 7, 'data-current': '1' }, undefined));
  }
}

// The sensitivity heatmap: a row per layer, a column per matrix kind, coloured by KL on a log scale. Every cell is a
// button: `onPick(row)` (the page adds the matrix to the skip list); the `skipped` names are outlined.
export const KINDS = [['q_proj', 'q'], ['k_proj', 'k'], ['v_proj', 'v'], ['out_proj', 'out'], ['c_fc', 'fc'], ['c_proj', 'proj']];
/** @param {SVGSVGElement} svg @param {any[]} rows
 * @param {{layers?: number, skipped?: string[], onPick?: (row: any) => void}} [o] */
export function heatmap(svg, rows, { layers, skipped = [], onPick } = {}) {
  if (!rows.length && !layers) { svg.setAttribute('viewBox', `0 0 ${W} ${H}`); return message(svg, 'measure sensitivity to draw it'); }
  const n = layers || 1 + Math.max(...rows.map((r) => layerOf(r.name)));
  const cw = 48, ch = 18, left = 44, top = 18;
  const height = top + n * ch + 30;
  // the grid is drawn at its full size before the first row arrives, so nothing moves as rows stream in
  svg.setAttribute('viewBox', `0 0 ${W} ${height}`);
  svg.replaceChildren();
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < KINDS.length; j++) svg.append(el('rect', { class: 'empty', x: left + j * cw, y: top + i * ch, width: cw, height: ch, fill: '#eeebe3', stroke: '#fff' }));
  }
  if (!rows.length) {
    KINDS.forEach(([, label], j) => svg.append(el('text', { x: left + j * cw + cw / 2, y: top - 5, 'text-anchor': 'middle' }, label)));
    for (let i = 0; i < n; i++) svg.append(el('text', { x: left - 6, y: top + i * ch + ch / 2 + 3, 'text-anchor': 'end' }, `layer ${i}`));
    svg.append(el('text', { x: left, y: height - 10 }, 'measure sensitivity to fill it'));
    return;
  }
  const kls = rows.map((r) => r.damage.kl).filter((v) => v > 0);
  const lo = Math.min(...kls), hi = Math.max(...kls);
  const level = (v) => (v > 0 && hi > lo ? Math.log(v / lo) / Math.log(hi / lo) : v > 0 ? 1 : 0);
  KINDS.forEach(([, label], j) => svg.append(el('text', { x: left + j * cw + cw / 2, y: top - 5, 'text-anchor': 'middle' }, label)));
  for (let i = 0; i < n; i++) svg.append(el('text', { x: left - 6, y: top + i * ch + ch / 2 + 3, 'text-anchor': 'end' }, `layer ${i}`));
  for (const r of rows) {
    const i = layerOf(r.name), j = KINDS.findIndex(([k]) => r.name.includes(`.${k}.`));
    if (i < 0 || j < 0) continue;
    const t = level(r.damage.kl);
    const cell = el('rect', {
      class: `cell${skipped.includes(r.name) ? ' skipped' : ''}`, x: left + j * cw, y: top + i * ch, width: cw, height: ch,
      fill: `hsl(8, 70%, ${Math.round(96 - 58 * t)}%)`, 'data-name': r.name, 'data-kl': r.damage.kl,
      tabindex: 0, role: 'button', 'aria-label': `${r.name}: KL ${r.damage.kl.toPrecision(3)}, cosine ${r.damage.cosine.toFixed(4)}; keep it dense`,
    });
    cell.append(el('title', {}, `${r.name} at rank ${r.rank}: KL ${r.damage.kl.toPrecision(3)}, cosine ${r.damage.cosine.toFixed(4)}, top-1 ${(100 * r.damage.top1).toFixed(1)}% — click to keep it dense`));
    if (onPick) {
      cell.addEventListener('click', () => onPick(r));
      cell.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onPick(r); } });
    }
    svg.append(cell);
  }
  svg.append(el('text', { x: left, y: height - 10 }, `KL ${lo.toPrecision(2)} (light) to ${hi.toPrecision(2)} (dark), log scale`));
}
const layerOf = (name) => { const m = /\.h\.(\d+)\./.exec(name); return m ? Number(m[1]) : -1; };
