// Helpers for the browser tests: the real server binary with --demo on a free port,
// Debian's Chromium through playwright-core (never a downloaded browser), and waits that
// always have a deadline and say what they were waiting for.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BINARY = process.env.BACKCHANNEL_BIN ?? join(ROOT, 'target/debug/backchannel');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const SCREENSHOTS = join(ROOT, 'target/screenshots');
/** The longest any one step (a page load, a frame, a DOM change) may take. */
export const STEP = 15_000;

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** `backchannel serve --demo` on 127.0.0.1:0 with a fresh data directory, and `args`. */
export async function startServer(args = []) {
  if (!existsSync(BINARY)) {
    throw new Error(`${BINARY} is missing: run \`cargo build -p backchannel\` first (or set BACKCHANNEL_BIN)`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'bc-browser-'));
  const child = spawn(BINARY, ['serve', '--demo', '--listen', '127.0.0.1:0', '--data-dir', dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', NO_COLOR: '1' },
  });
  children.add(child);
  let output = '';
  child.stderr.on('data', (chunk) => {
    output = (output + chunk).slice(-8000);
  });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no \`demo: open\` line within ${STEP} ms:\n${output}`)), STEP);
    child.stdout.on('data', (chunk) => {
      output += chunk;
      const match = /demo: open (http:\/\/\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1].replace(/\/$/, ''));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited (${code}) before listening:\n${output}`));
    });
  });
  return {
    url,
    output: () => output,
    /** A token signed with this server's secret (`backchannel token`), for users outside the demo's cast. */
    token(...flags) {
      const minted = spawnSync(BINARY, ['token', '--data-dir', dataDir, ...flags], { encoding: 'utf8' });
      if (minted.status !== 0) throw new Error(`backchannel token ${flags.join(' ')}: ${minted.stderr}`);
      return minted.stdout.trim();
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      children.delete(child);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium, headless. */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's package (apt-get install -y chromium) or set CHROMIUM_PATH`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: STEP,
  });
}

/**
 * A page in its own browser context (its own storage, like another person's browser),
 * recording console errors and uncaught exceptions for failure messages.
 */
export async function openPage(browser, url, viewport) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(STEP);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.problems = problems;
  await page.goto(url);
  return page;
}

/** Waits until some element matching `selector` contains `text`. */
export async function waitForText(page, selector, text, what = `${selector} containing ${JSON.stringify(text)}`) {
  try {
    await page.waitForFunction(
      ([sel, needle]) => [...document.querySelectorAll(sel)].some((node) => node.textContent.includes(needle)),
      [selector, text],
      { timeout: STEP },
    );
  } catch (error) {
    const seen = await page
      .evaluate((sel) => [...document.querySelectorAll(sel)].map((n) => n.textContent.trim()).slice(-8), selector)
      .catch(() => []);
    throw new Error(`waited ${STEP} ms for ${what}; found: ${JSON.stringify(seen)}; page problems: ${JSON.stringify(page.problems)}`, {
      cause: error,
    });
  }
}

/** Waits until `predicate(arg)` is true in the page. */
export async function waitUntil(page, predicate, arg, what) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: STEP });
  } catch (error) {
    throw new Error(`waited ${STEP} ms for ${what}; page problems: ${JSON.stringify(page.problems)}`, { cause: error });
  }
}

/** Screenshots of every page that is still open, under target/screenshots/. */
export async function screenshots(pages) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  const saved = [];
  for (const [name, page] of Object.entries(pages)) {
    if (page === undefined || page.isClosed()) continue;
    const path = join(SCREENSHOTS, `${name}.png`);
    try {
      await page.screenshot({ path, timeout: STEP });
      saved.push(path);
    } catch (error) {
      console.error(`screenshot of ${name} failed: ${error.message}`);
    }
  }
  return saved;
}

/** A marker nobody could type by chance. */
export function marker(prefix) {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}`;
}
