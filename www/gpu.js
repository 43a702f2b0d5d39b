// The GPU in the coordinating worker: asked for once (?device=cpu|gpu on the page's address forces a device; by
// default the GPU when the browser offers a WebGPU adapter), given to the Workspace, and dropped when it fails, so
// that the next job runs on the CPU. The label names the device beside every figure.
import { gpu_device, instance, post, progress } from './instance.js';

const WANT = new URLSearchParams(self.location.search).get('device') || 'auto';

/** The device in use: the adapter's facts (Rust gpu::AdapterFacts) or null for the CPU, and why not the GPU. */
export const device = { facts: null, why: '' };

let asked = null;

/** The label of the device that runs evaluations and generations. @param {number} workers */
export function deviceLabel(workers) {
  if (device.facts) return `GPU: ${device.facts.name} (${device.facts.backend}${device.facts.software ? ', software' : ''})`;
  return `CPU: wasm SIMD, ${workers} worker${workers === 1 ? '' : 's'}`;
}

function tell() {
  post({ type: 'device', label: deviceLabel(1), gpu: !!device.facts, why: device.why });
}

/** Ask the browser for its GPU (once, unless the CPU was asked for) and say which device will run. */
export async function findGpu() {
  if (WANT === 'cpu') {
    device.why = 'the CPU was asked for (?device=cpu)';
  } else {
    if (!asked) asked = gpu_device().catch((err) => { device.why = `WebGPU failed to start: ${err.message || err}`; return null; });
    const dev = await asked;
    if (dev) device.facts = { ...dev.facts(), name: await adapterName(dev.facts().name) };
    else if (!device.why) {
      device.why = WANT === 'gpu'
        ? 'the GPU was asked for (?device=gpu), but this browser offers no WebGPU adapter'
        : 'this browser offers no WebGPU adapter';
    }
  }
  tell();
}

/** Give the GPU found to this worker's new Workspace. */
export async function attachGpu() {
  const dev = WANT === 'cpu' || !asked ? null : await asked;
  if (dev && device.facts) device.facts = { ...instance.ws.gpu_attach(dev), name: device.facts.name };
}

/** The adapter's name as the browser gives it (WebGPU reports no description to wgpu in every browser: its vendor
 * and architecture are what there is). @param {string} given */
async function adapterName(given) {
  if (given && given !== 'unnamed adapter') return given;
  const gpu = /** @type {any} */ (self.navigator).gpu;
  const adapter = gpu ? await gpu.requestAdapter({ powerPreference: 'high-performance' }).catch(() => null) : null;
  const i = adapter && adapter.info;
  const parts = i ? [i.vendor, i.architecture, i.device, i.description].filter((x) => x) : [];
  return parts.length ? parts.join(' ') : 'unnamed adapter';
}

/** Whether evaluations and generations run on the GPU. */
export const onGpu = () => !!device.facts;

/** Put what the GPU does not hold yet on it (the original, the compressed model), with progress. */
export async function prepareGpu() {
  const work = instance.ws.gpu_prepare((done, total, what) => progress('gpu', done, total, what));
  await work.wait();
}

/** Run `job` on the GPU; a GPU fault ends it with the device's sentence and what it held, and the next job runs on
 * the CPU. @template T @param {() => Promise<T>} job @returns {Promise<T>} */
export async function withGpu(job) {
  try {
    return await job();
  } catch (err) {
    if (!err || err.kind !== 'gpu') throw err;
    const held = instance.ws.gpu_detach() || 'nothing yet';
    const name = device.facts ? `${device.facts.name} (${device.facts.backend})` : 'the GPU';
    device.facts = null;
    device.why = `${name} failed: ${err.message}`;
    tell();
    throw Object.assign(new Error(`${err.message}. It held ${held}; the next job runs on the CPU.`), { kind: 'gpu' });
  }
}

/** The next token of the generation `which` on the GPU, or null when it is finished. @param {string} which */
export async function gpuNextToken(which) {
  const work = instance.ws.gpu_generate_submit(which);
  if (!work) return null;
  return instance.ws.gpu_generate_accept(which, await work.wait());
}
