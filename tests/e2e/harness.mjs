// What the browser tests share: a hub of its own (the binary named by E2E_VISITHUB_BIN, started with
// --demo on a free loopback port and a temporary data folder), onboarding through the admin
// REST API, Debian's Chromium driven by playwright-core, bounded waits, and screenshots.
//
// Run inside a loopback-only network namespace (tests/browser_e2e.rs does it), so WebRTC sees
// 127.0.0.1 only and no traffic can leave the machine.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const ARTIFACTS = process.env.E2E_ARTIFACTS || 'target/e2e-artifacts';
const STEP_TIMEOUT_MS = 30000;

const started = Date.now();
const openPages = [];
export function log(...args) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` (sync or async) until it returns a truthy value; fails after `timeoutMs`. */
export async function until(what, check, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Waits until `fn` evaluates truthy in the page. */
export function pageUntil(page, what, fn, arg, timeoutMs = STEP_TIMEOUT_MS) {
  return until(what, () => page.evaluate(fn, arg), timeoutMs);
}

export async function startHub() {
  const bin = process.env.E2E_VISITHUB_BIN;
  if (!bin) throw new Error('E2E_VISITHUB_BIN must name the visithub binary');
  const port = await freePort();
  const metricsPort = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'visithub-e2e-'));
  const url = `http://127.0.0.1:${port}`;
  const args = [
    'serve',
    '--demo',
    '--listen', `127.0.0.1:${port}`,
    '--metrics-listen', `127.0.0.1:${metricsPort}`,
    '--data-dir', dataDir,
    '--allowed-origin', url,
    '--log', 'warn',
  ];
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (d) => (output += d));
  proc.stderr.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  // However this script ends (a failed check, its deadline), the hub does not outlive it.
  process.once('exit', () => proc.exitCode === null && proc.kill('SIGKILL'));
  await until('the hub to answer /healthz', async () => {
    if (proc.exitCode !== null) return true;
    const res = await fetch(`${url}/healthz`).catch(() => null);
    return res?.ok;
  });
  if (proc.exitCode !== null) throw new Error(`the hub exited with ${proc.exitCode}:\n${output}`);
  const admin = execFileSync(bin, ['token', '--role', 'admin', '--sub', 'e2e-admin', '--data-dir', dataDir], {
    encoding: 'utf8',
  }).trim();
  log(`hub on ${url}`);
  return {
    url,
    admin,
    output: () => output,
    /** The hub's message counters by type (for a failure's report: no bodies, only counts). */
    async messageCounts() {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      return text.split('\n').filter((l) => /^visithub_ws_messages_(in|out)_total\{/.test(l)).join('\n');
    },
    async stop() {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(timer);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export async function adminCall(hub, method, path, body) {
  const res = await fetch(`${hub.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${hub.admin}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export function onboard(hub, subject, name, role, states) {
  return adminCall(hub, 'POST', '/v1/caregivers', { subject, name, role, states });
}

export async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: STEP_TIMEOUT_MS,
    args: [
      '--allow-loopback-in-peer-connection',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      '--no-sandbox',
      '--headless',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  log(`chromium ${browser.version()}`);
  return browser;
}

/** A page in a context of its own (its own sessionStorage), camera and microphone allowed. */
export async function newPage(browser, hub, name) {
  const context = await browser.newContext({
    permissions: ['camera', 'microphone'],
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('pageerror', (e) => log(`${name} page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') log(`${name} console ${m.type()}: ${m.text()}`);
  });
  page.e2eName = name;
  page.hubUrl = hub.url;
  openPages.push(page);
  return page;
}

export async function screenshot(page, file) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, file);
  await page.screenshot({ path, fullPage: true });
  log(`screenshot ${path}`);
}

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

/** The patient page: intake in `state`, then waits until its socket is open. */
export async function patientIntake(page, { name, state, reason }) {
  await page.goto(`${page.hubUrl}/demo/patient.html`);
  await page.fill('#name', name);
  await page.selectOption('#state', state);
  await page.fill('#reason', reason);
  await page.click('#intake-submit');
  await pageUntil(page, 'the patient socket to open', () => window.visithubDemo.client?.status === 'open');
  return page.evaluate(() => window.visithubDemo.visitId);
}

/** The console: demo sign-in as `subject`, then waits for the portal to load. */
export async function consoleSignIn(page, subject) {
  await page.goto(`${page.hubUrl}/demo/console.html`);
  await page.fill('#signin-subject', subject);
  await page.click('#signin-button');
  await page.waitForSelector('#workspace:not(.hidden)');
  await pageUntil(page, `${subject}'s queues`, () => window.visithubDemo.queues.size > 0);
}

/** Texts of the chat bubbles in `selector`'s chat log. */
export function chatBodies(page, selector) {
  return page.$$eval(`${selector} li .body`, (els) => els.map((e) => e.textContent));
}

/** Sends a chat message from a console's open conversation card. */
export async function consoleSend(page, visitId, text) {
  const card = `[data-chat="${visitId}"]`;
  await page.fill(`${card} .chat-input`, text);
  await page.click(`${card} .chat-send`);
}

/** Sends a chat message from the patient page. */
export async function patientSend(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#chat-send');
}

/** Inbound video of the page's call: frames decoded so far (getStats). */
export function framesDecoded(page) {
  return page.evaluate(async () => (await window.visithubDemo.call.inboundVideo()).framesDecoded);
}

/** Waits until the page's RTCPeerConnection is connected and has decoded remote video. */
export async function waitForVideo(page, minFrames = 10) {
  await pageUntil(page, `${page.e2eName}'s peer connection to connect`, () =>
    window.visithubDemo.call?.pc?.connectionState === 'connected',
  );
  await until(`${page.e2eName} to decode ${minFrames} video frames`, async () => (await framesDecoded(page)) >= minFrames);
  await pageUntil(page, `${page.e2eName}'s remote video element to play`, () => {
    const v = document.getElementById('remote-video');
    return v.videoWidth > 0 && v.readyState >= 2;
  });
}

/** Runs `body` with a fresh hub and browser, always cleaning up; exits non-zero on failure. */
export async function run(name, body, { deadlineMs = 150000 } = {}) {
  let hub;
  let browser;
  const deadline = setTimeout(() => {
    console.error(`${name}: FAILED: over the ${deadlineMs} ms deadline`);
    process.exit(2);
  }, deadlineMs);
  let ok = false;
  // Screenshots of an earlier run of this script would pass for this run's.
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of readdirSync(ARTIFACTS)) if (f.startsWith(`${name}-`)) rmSync(join(ARTIFACTS, f));
  try {
    hub = await startHub();
    browser = await launchBrowser();
    await body({ hub, browser });
    ok = true;
  } catch (e) {
    console.error(`${name}: FAILED: ${e.stack || e}`);
    if (hub) console.error(`hub output:\n${hub.output()}`);
    // What each side of a call that never connected got as far as, and what the hub saw by
    // type: tells a lost offer, answer or candidate from a page that never sent it.
    if (hub) console.error(`hub messages:\n${await hub.messageCounts().catch((err) => String(err))}`);
    for (const page of openPages) {
      const state = await page
        .evaluate(() => {
          const d = window.visithubDemo;
          const pc = d?.call?.pc;
          const count = (sdp) => (sdp?.match(/^a=candidate:/gm) ?? []).length;
          return {
            socket: d?.client?.status,
            resumes: d?.client?.resumes,
            pc: pc && {
              connection: pc.connectionState,
              ice: pc.iceConnectionState,
              signaling: pc.signalingState,
              localCandidates: count(pc.localDescription?.sdp),
              remoteCandidates: count(pc.remoteDescription?.sdp),
            },
          };
        })
        .catch((err) => String(err));
      console.error(`${page.e2eName}: ${JSON.stringify(state)}`);
    }
    for (const page of openPages) await screenshot(page, `${name}-failed-${page.e2eName}.png`).catch(() => {});
  } finally {
    await browser?.close().catch(() => {});
    await hub?.stop().catch(() => {});
    clearTimeout(deadline);
  }
  log(`${name}: ${ok ? 'passed' : 'FAILED'}`);
  process.exit(ok ? 0 : 1);
}
