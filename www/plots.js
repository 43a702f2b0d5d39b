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

// every run of the session: compressed bytes vs cosine
export function runs(svg, list) {
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
    const c = el('circle', { class: 'pt', cx: s.sx(r.bytes), cy: s.sy(r.cosine), r: 4 });
    c.append(el('title', {}, r.label));
    svg.append(c, el('text', { x: s.sx(r.bytes) + 5, y: s.sy(r.cosine) - 4 }, `#${i + 1}`));
  });
}
