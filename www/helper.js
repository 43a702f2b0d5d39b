// A helper worker: one more wasm instance that the coordinator (coordinator.js) starts to share a job's work. It
// answers the h_* commands of protocol.js, each on the models the coordinator tells it to hold: one part of an
// evaluation's windows, one matrix of a compression, one point of a sweep, one part of a sensitivity table.
import { checkpoint, faultPoint, heapBytes, instance, need, post, progress, serve, Transfer, Workspace } from './instance.js';

/** A fresh Workspace holding the original's files, opened (and, with `load`, loaded). @param {File[]} files */
function original(files, load) {
  const ws = (instance.ws = new Workspace());
  ws.open(files);
  if (load) ws.load();
  return ws;
}

const commands = {
  // hold the same original and compressed models as the coordinator (the original kept when it is the one held, with
  // what its evaluations kept: a later evaluation on the same tokens does not run it again)
  /** @param {Omit<import('./protocol.js').HelperModelsCommand, 'cmd'>} c */
  async h_models({ original: files, compressed, reuse }) {
    const ws = reuse && instance.ws ? instance.ws : original(files, true);
    const r = ws.open([compressed]);
    if (!r.matches_original) throw new Error('the compressed model does not belong to the original');
    return true;
  },

  // hold the original's files open (nothing loaded), to read the weights a compression's work needs; with `reuse`,
  // the original this helper holds already
  /** @param {Omit<import('./protocol.js').HelperOpenCommand, 'cmd'>} c */
  async h_open({ original: files, reuse }) {
    if (!(reuse && instance.ws)) original(files, false);
    return true;
  },

  // one unit of a compression's work (a spectrum, a matrix's factors, the allocation check's candidates), handed back
  // as bytes (transferred, not copied)
  /** @param {Omit<import('./protocol.js').HelperWorkCommand, 'cmd'>} c */
  async h_work({ bytes }) {
    faultPoint();
    const out = need().run_work(bytes);
    return new Transfer({ bytes: out, heap: await heapBytes() }, [out.buffer]);
  },

  // evaluate one part of the windows and hand back the sums
  /** @param {Omit<import('./protocol.js').HelperEvalCommand, 'cmd'>} c */
  async h_eval({ text, skip, tokens, window, part, parts }) {
    const ws = need();
    ws.eval_begin({ text, skip, tokens, window, part, parts });
    for (;;) {
      await checkpoint();
      const step = ws.eval_step();
      if (step === null || step === undefined) break;
      progress('evaluate', step.done, step.total);
    }
    return ws.eval_partial();
  },

  // open and load the original alone
  /** @param {Omit<import('./protocol.js').HelperOriginalCommand, 'cmd'>} c */
  async h_original({ original: files }) {
    original(files, true);
    return true;
  },

  // one point of a sweep
  /** @param {Omit<import('./protocol.js').HelperPointCommand, 'cmd'>} c */
  async h_point({ spec }) {
    faultPoint();
    return need().sweep(spec)[0];
  },

  // one part of a sensitivity table, a row at a time (each row rides on its progress message)
  /** @param {Omit<import('./protocol.js').HelperSensitivityCommand, 'cmd'>} c */
  async h_sensitivity({ policy, text, part, parts }) {
    const ws = need();
    const total = ws.sensitivity_begin(policy, text, part, parts);
    let done = 0;
    progress('sensitivity', 0, total, 'calibrated');
    for (;;) {
      await checkpoint();
      const row = ws.sensitivity_step();
      if (row === null || row === undefined) break;
      done += 1;
      post({ type: 'progress', task: 'sensitivity', done, total, label: row.name, row });
    }
    return true;
  },
};

// what a helper is doing is said by the coordinator, which knows the part it gave (team.js)
serve(commands, { doing: {} });
