// The page: renders what the worker reports. All model work happens in www/worker.js.
const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });

function setState(state, text) {
  $('status').dataset.state = state;
  $('status-text').textContent = text || state;
}
function showError(message) {
  setState('error', 'error');
  $('error').hidden = false;
  $('error').textContent = message;
}
function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}
function busy(on) {
  $('cancel').disabled = !on;
  $('load-demo').disabled = on;
  $('generate').disabled = on || !loaded;
  $('progress').hidden = !on;
}

let loaded = false;
let pending = null;
function send(msg) {
  clearError();
  busy(true);
  return new Promise((resolve, reject) => {
    pending = { resolve, reject };
    worker.postMessage(msg);
  });
}

worker.onmessage = (e) => {
  const m = e.data;
  switch (m.type) {
    case 'state': setState(m.state, m.message); break;
    case 'progress':
      $('progress').hidden = false;
      $('progress-bar').max = m.total; $('progress-bar').value = m.done;
      $('progress-text').textContent = `${m.task}: ${m.label ?? ''} ${m.done}/${m.total}`;
      break;
    case 'token':
      $(`gen-${m.which}`).textContent += m.text;
      if (m.tokens_per_s) $(`rate-${m.which}`).textContent = `${m.tokens_per_s.toFixed(1)} tokens/s`;
      break;
    case 'result': busy(false); pending?.resolve(m.result); pending = null; break;
    case 'cancelled': busy(false); pending?.reject(new Error('cancelled')); pending = null; setState('ready', 'cancelled'); break;
    case 'error': busy(false); pending?.reject(new Error(m.message)); pending = null; showError(m.message); break;
  }
};

function describe(report) {
  const s = report.summary;
  const mb = (b) => (b / 1e6).toFixed(1) + ' MB';
  const lines = [
    `${s.model_type}: ${s.num_layers} layers, hidden ${s.hidden_size}, ${s.num_heads} heads, vocab ${s.vocab_size}`,
    `${(s.parameters / 1e6).toFixed(2)} M parameters, ${Object.keys(s.dtypes).join('/')}, ${mb(s.file_bytes)} in ${s.files.length} file(s)`,
  ];
  if (report.missing.length) lines.push(`missing: ${report.missing.join(', ')}`);
  $('model-info').textContent = lines.join('\n');
}

async function open(msg) {
  setState('loading', 'loading');
  try {
    const report = await send({ cmd: 'open', ...msg });
    describe(report);
    loaded = true;
    busy(false);
    setState('ready', 'ready');
  } catch (err) { if (err.message !== 'cancelled') showError(err.message); }
}

function samplingParams() {
  const num = (id) => Number($(id).value);
  return { max_new_tokens: num('max-new-tokens'), temperature: num('temperature'), top_k: num('top-k'),
    top_p: num('top-p'), seed: num('seed'), stop_at_eos: $('stop-at-eos').checked };
}

$('load-demo').addEventListener('click', () => open({ demo: true }));
$('files').addEventListener('change', (e) => open({ files: [...e.target.files] }));
const dz = $('dropzone');
dz.addEventListener('dragover', (e) => { e.preventDefault(); dz.classList.add('over'); });
dz.addEventListener('dragleave', () => dz.classList.remove('over'));
dz.addEventListener('drop', (e) => { e.preventDefault(); dz.classList.remove('over'); open({ files: [...e.dataTransfer.files] }); });
$('cancel').addEventListener('click', () => worker.postMessage({ cmd: 'cancel' }));
$('generate').addEventListener('click', async () => {
  $('gen-original').textContent = '';
  setState('generating', 'generating');
  try {
    await send({ cmd: 'generate', which: 'original', prompt: $('prompt').value, params: samplingParams() });
    setState('done', 'done');
  } catch (err) { if (err.message !== 'cancelled') showError(err.message); }
});
