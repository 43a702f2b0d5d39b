// The worker of `scale.mjs svd`: the randomized SVD profiled in its own wasm instance, as a page worker runs it.
import init, { profile_svd } from '../../www/pkg/semantic_llm_compressor.js';

self.onmessage = async (e) => {
  await init();
  const [m, n, os, q] = e.data;
  try {
    self.postMessage(profile_svd({ m, n, rank: 128, runs: 3, oversample: os, power_iters: q }));
  } catch (err) {
    self.postMessage({ error: String(err) });
  }
};
