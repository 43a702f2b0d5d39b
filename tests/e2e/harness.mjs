// What the page's end-to-end tests share: the page served from the repository and Debian's Chromium, headless,
// driven by playwright-core (no browser is downloaded).
import { chromium } from 'playwright-core';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Chromium's flags for a WebGPU adapter without a GPU: SwiftShader (and not --disable-gpu, which removes it). */
export const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];

/** The server and the browser: {server, browser}; with `gpu`, a browser that offers WebGPU (SwiftShader). */
export async function start({ gpu = false } = {}) {
  const server = await serve(ROOT);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', ...(gpu ? WEBGPU_ARGS : ['--disable-gpu']), '--disable-dev-shm-usage',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  return { server, browser };
}

/** Prints a test's step. */
export const step = (s) => console.log(`- ${s}`);
