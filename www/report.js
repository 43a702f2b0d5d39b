// The report to share: one self-contained HTML file made from what the page shows — the model, the policy, the
// summary, the per-layer table, the plots, the generations and, when there are some, the origin's story, the runs
// compared and the explorer's plots. Its CSS is
// the page's, inline; its plots are the page's SVG, inline; it has no script, so it reads the same with scripts off.
// Everything is copied as DOM nodes and serialized, so text from a user's file stays text.

/** Each section: its id, its heading, the page's elements it copies. @type {[string, string, string[]][]} */
const SECTIONS = [
  ['report-model', 'The model', ['#model-info']],
  ['report-policy', 'The policy', []],
  ['report-summary', 'What it did', ['#summary', '#summary-note']],
  ['report-plots', 'Plots', ['.plots']],
  ['report-layers', 'Every weight matrix', ['#layer-errors']],
  ['report-generation', 'Generation, side by side', ['.gen-columns', '#gen-note']],
  ['report-story', "The origin's story", ['#story-note', '#story-table']],
  ['report-runs', 'Runs compared', ['#runs-table', '#runs-compare']],
  ['report-explorer', 'Explorer', ['#sweep-plot', '#sweep-note', '#sweep-table', '#heatmap', '#sens-note']],
];
// sections shown only when they hold something
const FILLED = {
  'report-story': (doc) => doc.querySelector('#story-table tbody tr'),
  'report-runs': (doc) => doc.querySelector('#runs-table tbody tr'),
  'report-explorer': (doc) => doc.querySelector('#sweep-plot circle, #heatmap rect'),
};

/**
 * The report as an HTML string. `policy` is a sentence describing the policy, `settings` the form's fields
 * (name → value), `css` the page's stylesheet, `link` the URL that reopens the setting.
 */
export function reportHtml(doc, { title, policy, settings, css, link, made }) {
  // the sections are built detached in an inert document and serialized; the head is written as text (an inline
  // <style> element would be checked against the page's own Content-Security-Policy)
  const out = document.implementation.createHTMLDocument(title);
  const main = out.createElement('main');
  const h1 = out.createElement('h1');
  h1.textContent = title;
  const sub = out.createElement('p');
  sub.className = 'muted small';
  sub.textContent = `Made by semantic-llm-compressor on ${made}. `;
  if (link) {
    const a = out.createElement('a');
    a.href = link;
    a.textContent = 'This setting in the page';
    sub.append(a);
  }
  main.append(h1, sub);
  for (const [id, heading, selectors] of SECTIONS) {
    const nodes = selectors.map((s) => doc.querySelector(s)).filter((n) => n && !n.closest('[hidden]'));
    if (FILLED[id] && (!FILLED[id](doc) || !nodes.length)) continue;
    const section = out.createElement('section');
    section.id = id;
    const h2 = out.createElement('h2');
    h2.textContent = heading;
    section.append(h2);
    if (id === 'report-policy') {
      const p = out.createElement('p');
      p.textContent = policy;
      const dl = out.createElement('dl');
      dl.className = 'facts';
      for (const [k, v] of Object.entries(settings)) {
        if (v === '' || v === null || v === undefined) continue;
        dl.append(Object.assign(out.createElement('dt'), { textContent: k }), Object.assign(out.createElement('dd'), { textContent: String(v) }));
      }
      section.append(p, dl);
    }
    for (const n of nodes) {
      const copy = out.importNode(n, true);
      // controls do nothing in a file: their labels stay, as text
      for (const b of copy.querySelectorAll('button')) b.replaceWith(out.createTextNode(b.textContent));
      for (const s of copy.querySelectorAll('select')) s.replaceWith(out.createTextNode(s.selectedOptions[0]?.textContent || ''));
      for (const c of copy.querySelectorAll('input[type="checkbox"]')) c.replaceWith(out.createTextNode(c.checked ? '✓' : ''));
      for (const e of copy.querySelectorAll('[tabindex]')) e.removeAttribute('tabindex');
      for (const e of copy.querySelectorAll('[aria-live]')) e.removeAttribute('aria-live');
      section.append(copy);
    }
    main.append(section);
  }
  const escape = (t) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const style = `${css}\nbody { max-width: 80rem; margin: 0 auto; padding: 1rem; }\nmain { display: block; }\nsection { margin: 0 0 1rem; }\n`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>${escape(title)}</title>
<style>
${style.replace(/<\/style/gi, '<\\/style')}
</style>
</head>
<body>
${main.outerHTML}
</body>
</html>
`;
}
