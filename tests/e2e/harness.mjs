// What the page's end-to-end tests share: the page served from the repository and Debian's Chromium, headless,
// driven by playwright-core (no browser is downloaded).
import { chromium } from 'playwright-core';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The server and the browser: {server, browser}. */
export async function start() {
  const server = await serve(ROOT);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  return { server, browser };
}

/** Prints a test's step. */
export const step = (s) => console.log(`- ${s}`);
