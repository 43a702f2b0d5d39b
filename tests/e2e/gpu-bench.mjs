// Benchmark: the GPU kernels in headless Chromium on its WebGPU adapter (SwiftShader here; any adapter the browser
// offers), against that adapter's own memory bandwidth and multiply-add throughput measured in the same run by probe
// kernels — the same code as `slc bench gpu` natively. Prints figures only.
//   node tests/e2e/gpu-bench.mjs [hidden=256] [inner=1024] [tokens=512] [vocab=0]
import { start } from './harness.mjs';

const [hidden, inner, tokens, vocab] = [256, 1024, 512, 0].map((d, i) => Number(process.argv[2 + i] || d));
const { server, browser } = await start({ gpu: true });
try {
  const page = await browser.newPage();
  await page.goto(server.url);
  const r = await page.evaluate(async (spec) => {
    const m = await import('/www/pkg/semantic_llm_compressor.js');
    await m.default();
    return m.gpu_bench(spec);
  }, { hidden, inner, tokens, vocab });
  const a = r.adapter;
  console.log(`adapter: ${a.name} (${a.backend}${a.software ? ', software' : ''}) ${a.driver}`);
  console.log(`kernels measured fastest: ${r.plan.many} for products of many rows of x, ${r.plan.one} for one, ${r.plan.attention} for attention`);
  console.log(`bounds: memory ${(r.bounds.copy_bytes_per_s / 1e9).toFixed(2)} GB/s (the fastest probe kernel), multiply-add ${(r.bounds.flops / 1e9).toFixed(1)} GFLOP/s`);
  for (const k of r.kernels) {
    console.log(`  ${k.kernel.padEnd(44)} ${(k.seconds * 1e3).toFixed(3).padStart(9)} ms  ${(k.bytes_per_s / 1e9).toFixed(2).padStart(7)} GB/s  ${(k.flops_per_s / 1e9).toFixed(2).padStart(8)} GFLOP/s  ${(100 * k.of_bound).toFixed(1).padStart(5)}% of its bound`);
  }
} finally {
  await browser.close();
  server.close();
}
