// What leaves the page: the compressed checkpoint, and the self-contained report.
import { reportHtml } from './report.js';
import { $, app, fmtBytes, setState } from './page.js';
import { run } from './jobs.js';
import { describePolicy, formFields, policyFromForm, settingLink } from './form.js';

export function exportCheckpoint() {
  run({ cmd: 'export', name: `${app.name}-compressed.safetensors` }, ({ blob, name }) => {
    const a = $('download');
    const url = URL.createObjectURL(blob);
    a.href = url;
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    setState('done', `exported ${fmtBytes(blob.size)}`);
  });
}

export async function downloadReport() {
  let css = '';
  try { css = await (await fetch(new URL('./style.css', import.meta.url))).text(); } catch { /* a report without the page's style */ }
  let policy;
  try { policy = describePolicy(policyFromForm()); } catch (err) { policy = err.message; }
  const title = `Compression report: ${app.name}`;
  const html = reportHtml(document, { title, policy, settings: formFields(), css, link: settingLink(), made: new Date().toISOString().slice(0, 10) });
  const a = $('download');
  const url = URL.createObjectURL(new Blob([html], { type: 'text/html' }));
  a.href = url;
  a.download = `${app.name}-report.html`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  setState($('status').dataset.state, `report saved (${fmtBytes(html.length)})`);
}
