// What every worker instance shares, the coordinator (coordinator.js, started by the page) and its helpers
// (helper.js, started by the coordinator): the wasm package (this is the only file that imports it), the instance's
// Workspace, the events it posts (protocol.js), cancellation and the fault points the tests use, the heartbeat, and
// the loop that runs one command at a time. Long jobs run step by step and yield between steps (a macrotask), so a
// {cmd: "cancel"} gets through and ends the job cleanly.
import init, { Workspace, default_policy, gpu_bench, gpu_device, measure_speed, test_trap } from './pkg/semantic_llm_compressor.js';
import { errorEvent, isFatal, HEARTBEAT_MS } from './protocol.js';

export { Workspace, default_policy, gpu_bench, gpu_device, measure_speed };

/** The wasm module, once instantiated. */
export const ready = init();

/**
 * This instance's state: its Workspace (the core's session), whether the running job was asked to stop, what it is
 * doing (for the sentence said if it dies), a fault the end-to-end tests asked for.
 * @type {{ws: ?Workspace, cancelled: boolean, busy: boolean, doing: string, fault: ?('trap'|'hang')}}
 */
export const instance = { ws: null, cancelled: false, busy: false, doing: 'starting', fault: null };

/** Post an event to whoever started this instance. @param {import('./protocol.js').Event} msg @param {Transferable[]} [transfer] */
export const post = (msg, transfer) => self.postMessage(msg, transfer || []);
export const tick = () => new Promise((r) => setTimeout(r, 0));
/** @param {string} state @param {string} message */
export const state = (state, message) => post({ type: 'state', state, message });
/** @param {string} task @param {number} done @param {number} total @param {string} [label] */
export const progress = (task, done, total, label) => post({ type: 'progress', task, done, total, label });

/** A command's result whose buffers are moved to whoever asked, not copied (a compression's work is megabytes). */
export class Transfer {
  /** @param {any} value @param {Transferable[]} list */
  constructor(value, list) {
    this.value = value;
    this.list = list;
  }
}

/** A job ended by a cancel. */
export class Cancelled extends Error {}

/** This instance's wasm memory: what it has grown to (it never shrinks). */
export const heapBytes = async () => (await ready).memory.buffer.byteLength;
export const mib = (b) => `${Math.round((b || 0) / 2 ** 20)} MiB`;

/** A fault the end-to-end tests asked for ({cmd: 'test_fault'}) strikes here, at the next step of the running job. */
export function faultPoint() {
  if (!instance.fault) return;
  const kind = instance.fault;
  instance.fault = null;
  if (kind === 'trap') test_trap(instance.doing);
  if (kind === 'hang') for (;;) { /* never answers again: only the missing heartbeat tells */ }
}

/** Between two steps of a job: yield, strike a test's fault, stop if cancelled. */
export async function checkpoint() {
  await tick();
  faultPoint();
  if (instance.cancelled) throw new Cancelled('cancelled');
}

/** The Workspace, or the sentence that no model is loaded. @returns {Workspace} */
export function need() {
  if (!instance.ws) throw new Error('no model is loaded: load the demo model or drop a checkpoint first');
  return instance.ws;
}

// A heartbeat with this instance's wasm memory, so whoever started it can tell a busy worker from a dead one and say
// how much memory it held. A wasm step runs to its end before the next beat, so a beat may be late by one step.
setInterval(async () => post({ type: 'alive', heap: await heapBytes(), doing: instance.doing }), HEARTBEAT_MS);

/**
 * Run the commands that arrive, one job at a time: each ends with exactly one "result", "cancelled" or "error"
 * event carrying the command's id. `doing` names what each command does, for the sentence said if the instance dies;
 * `onStart` runs as each job starts; `onCancel` and `onFault` let the coordinator pass a cancel or a test's fault on to
 * its helpers; `quick` answers questions that are not jobs at once, between the steps of a running job.
 * @param {Object<string, (args: any) => Promise<any>>} commands
 * @param {{doing: Object<string, string>, onStart?: () => void, onCancel?: () => void,
 *   onFault?: (args: any) => boolean, quick?: Object<string, (args: any) => any>}} o
 */
export function serve(commands, { doing, onStart, onCancel, onFault, quick = {} }) {
  self.onmessage = async (e) => {
    const { cmd, id, ...args } = e.data;
    if (cmd === 'cancel') {
      instance.cancelled = instance.busy;
      if (onCancel) onCancel();
      return;
    }
    if (cmd === 'test_fault') {
      // for the end-to-end tests: this instance (or, through onFault, its helpers) traps or hangs at the next step
      if (!onFault || !onFault(args)) instance.fault = args.kind;
      return;
    }
    await ready;
    if (quick[cmd]) {
      // quick and side-effect free: answered at once, even between the steps of a running job
      try {
        post({ type: 'result', cmd, id, result: quick[cmd](args) });
      } catch (err) {
        post({ ...errorEvent(cmd, err), id });
      }
      return;
    }
    const run = commands[cmd];
    if (!run) {
      post({ ...errorEvent(cmd, new Error(`unknown command ${cmd}`)), id });
      return;
    }
    instance.busy = true;
    instance.cancelled = false;
    instance.doing = doing[cmd] || cmd;
    if (onStart) onStart();
    try {
      const result = await run(args);
      if (result instanceof Transfer) post({ type: 'result', cmd, id, result: result.value }, result.list);
      else post({ type: 'result', cmd, id, result });
    } catch (err) {
      if (err instanceof Cancelled) post({ type: 'cancelled', cmd, id });
      else if (isFatal(err)) {
        // the wasm instance trapped or ran out of memory: its state is lost and it must not be used again
        const heap = await heapBytes().catch(() => 0);
        const message = `the worker's WebAssembly instance failed while it ${instance.doing} (${err.message || err}); it held ${mib(heap)} of memory`;
        post({ ...errorEvent(cmd, err), message, id, fatal: true, heap, doing: instance.doing });
        self.onmessage = null;
      } else post({ ...errorEvent(cmd, err), id });
    } finally {
      instance.busy = false;
      instance.cancelled = false;
    }
  };
}
