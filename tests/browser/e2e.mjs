// Headless-Chromium end-to-end test for Sluice's WHIP/WHEP browser pages.
//
//   SLUICE_URL=http://127.0.0.1:8080 node e2e.mjs
//
// Uses the system Chromium (CHROMIUM, default /usr/bin/chromium) with fake
// camera/microphone devices. Reads the pages' test hooks (window.sluice,
// window.sluiceStop) and prints one JSON line on success; on failure it
// prints the reason plus the pages' console logs and exits 1.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BASE = (process.env.SLUICE_URL || '').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT_DIR = join(dirname(fileURLToPath(import.meta.url)), 'out');
const HARD_TIMEOUT_MS = 120_000;
const STEP_TIMEOUT_MS = 20_000;

const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];

let browser = null;
const pages = new Map(); // label -> Page
const logs = [];         // console lines of all pages, prefixed with the label
let failing = false;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const randomId = () => Math.random().toString(36).slice(2, 10);

/** Closes the browser, but never waits on it for more than 5 s. */
async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  await Promise.race([b.close().catch(() => {}), sleep(5000)]);
}

/** Prints the reason, the pages' hook state and console logs; exits 1. */
async function fail(reason) {
  if (failing) return;
  failing = true;
  console.log(`FAIL: ${reason instanceof Error ? reason.stack || reason.message : reason}`);
  for (const [label, page] of pages) {
    const state = await Promise.race([hooksOf(page).catch((e) => `unavailable (${e.message})`), sleep(2000)]);
    console.log(`--- ${label} (${page.url()}) window.sluice = ${JSON.stringify(state)}`);
  }
  console.log(`--- browser console (${logs.length} lines)`);
  for (const line of logs) console.log(line);
  await closeBrowser();
  process.exit(1);
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

/** Opens a page in ctx and records its console output under label. */
async function openPage(ctx, label, url) {
  const page = await ctx.newPage();
  pages.set(label, page);
  page.on('console', (m) => logs.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[${label}] pageerror: ${e.message}`));
  page.on('requestfailed', (r) =>
    logs.push(`[${label}] requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText ?? ''}`));
  page.on('response', (r) => {
    if (r.status() >= 400) logs.push(`[${label}] HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  const res = await page.goto(url, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
  assert(res && res.ok(), `${label}: GET ${url} returned ${res ? res.status() : 'no response'}`);
  return page;
}

/** Snapshot of the page's window.sluice test hooks. */
function hooksOf(page) {
  return page.evaluate(() => (window.sluice ? JSON.parse(JSON.stringify(window.sluice)) : null));
}

/**
 * Waits until `cond` (a JS expression over `s` = window.sluice) holds or the
 * page reports an error, then returns the hooks. Throws on timeout or error.
 */
async function waitHook(label, cond, timeout = STEP_TIMEOUT_MS) {
  const page = pages.get(label);
  const expr = `((s) => !!s && (!!s.error || (${cond})))(window.sluice)`;
  try {
    await page.waitForFunction(expr, null, { timeout, polling: 100 });
  } catch (e) {
    const s = await hooksOf(page).catch(() => null);
    throw new Error(`${label}: timed out after ${timeout} ms waiting for ${cond}; window.sluice=${JSON.stringify(s)}`);
  }
  const s = await hooksOf(page);
  if (s.error) throw new Error(`${label}: page reported error: ${s.error}`);
  return s;
}

/** Test 1: publish, then watch; stats grow; screenshots; Stop on both. */
async function testPublishWatch(ctx) {
  const room = `e2e-${randomId()}`;
  await openPage(ctx, 'publisher', `${BASE}/publish/${room}?autostart=1`);
  await waitHook('publisher', "s.state === 'connected'");

  const viewer = await openPage(ctx, 'viewer', `${BASE}/watch/${room}?autostart=1`);
  const first = await waitHook('viewer',
    's.framesDecoded > 0 && s.frameWidth > 0 && s.firstFrameAt != null && s.postStartedAt != null');
  const firstFrameMs = Math.round(first.firstFrameAt - first.postStartedAt);

  // A player that shows each track's stream, as many WHEP players do,
  // must get audio and video in one MediaStream (and the browser then
  // plays them in sync).
  const tracks = await viewer.evaluate(async (url) => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const got = [];
    pc.ontrack = (e) => got.push({ kind: e.track.kind, streams: e.streams.map((m) => m.id) });
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    pc.close();
    const resource = res.headers.get('location');
    if (resource) await fetch(new URL(resource, url), { method: 'DELETE' });
    return got;
  }, `${BASE}/whep/${room}`);
  assert(tracks.length === 2 && tracks.every((t) => t.streams.length === 1)
    && tracks[0].streams[0] === tracks[1].streams[0],
    `audio and video are not one MediaStream: ${JSON.stringify(tracks)}`);

  await sleep(3000);
  const later = await hooksOf(viewer);
  assert(later.framesDecoded > first.framesDecoded,
    `viewer framesDecoded did not increase in 3 s (${first.framesDecoded} -> ${later.framesDecoded})`);
  const pub = await hooksOf(pages.get('publisher'));
  assert(pub.layers.some((l) => l.bytesSent > 0), `publisher sent no video bytes: ${JSON.stringify(pub.layers)}`);

  await mkdir(OUT_DIR, { recursive: true });
  await pages.get('publisher').screenshot({ path: join(OUT_DIR, 'publish.png') });
  await viewer.screenshot({ path: join(OUT_DIR, 'watch.png') });

  // The quality menu: Low switches the viewer to the publisher's q layer,
  // Auto brings it back up (to f, or h while Chromium has not started f).
  const q = pub.layers.find((l) => l.rid === 'q');
  assert(q && q.frameWidth > 0, `publisher sends no q layer: ${JSON.stringify(pub.layers)}`);
  await viewer.selectOption('#layer', 'q');
  await waitHook('viewer', `s.frameWidth === ${q.frameWidth}`, 10000);
  // Chromium starts its upper layers as its uplink estimate grows: Auto
  // can only move up once one of them is on the wire.
  await waitHook('publisher', `s.layers.some((l) => l.rid !== 'q' && l.frameWidth > ${q.frameWidth})`, 20000);
  await viewer.selectOption('#layer', 'auto');
  await waitHook('viewer', `s.frameWidth > ${q.frameWidth}`, 10000);

  const viewerStop = await viewer.evaluate(() => window.sluiceStop());
  assert(viewerStop === 200, `viewer DELETE returned ${viewerStop}, expected 200`);
  const publisherStop = await pages.get('publisher').evaluate(() => window.sluiceStop());
  assert(publisherStop === 200, `publisher DELETE returned ${publisherStop}, expected 200`);
  await waitHook('viewer', "s.state === 'closed' && s.stopped", 2000);
  await waitHook('publisher', "s.state === 'closed' && s.stopped", 2000);

  return { firstFrameMs, width: later.frameWidth, height: later.frameHeight };
}

/** Test 2: the landing page renders and shows the WHIP URL. */
async function testIndex(ctx) {
  const page = await openPage(ctx, 'index', `${BASE}/`);
  const title = await page.title();
  assert(title.includes('Sluice'), `index title ${JSON.stringify(title)} does not contain "Sluice"`);
  const whip = await page.textContent('#whip-url');
  assert(whip && whip.endsWith('/whip/demo'), `index WHIP URL is ${JSON.stringify(whip)}`);
  await mkdir(OUT_DIR, { recursive: true });
  await page.screenshot({ path: join(OUT_DIR, 'index.png'), fullPage: true });
  await page.close();
  pages.delete('index');
}

/**
 * Test 3: a viewer joins an empty room; frames arrive once a publisher
 * joins; when that publisher leaves the viewer shows it, and a new
 * publisher's video reaches the same viewer session.
 */
async function testViewerFirst(ctx) {
  const room = `e2e-${randomId()}`;
  await openPage(ctx, 'early-viewer', `${BASE}/watch/${room}?autostart=1`);
  await sleep(2000);
  const before = await hooksOf(pages.get('early-viewer'));
  if (before.error) throw new Error(`early-viewer: page reported error before publisher: ${before.error}`);

  await openPage(ctx, 'late-publisher', `${BASE}/publish/${room}?autostart=1`);
  const v = await waitHook('early-viewer', 's.framesDecoded > 0 && s.frameWidth > 0 && s.firstFrameWall != null');
  const p = await hooksOf(pages.get('late-publisher'));
  // Both pages share one machine clock: publisher's WHIP POST -> viewer's first frame.
  const lateMs = Math.round(v.firstFrameWall - p.postStartedWall);

  // The publisher leaves: the viewer's page says so instead of freezing.
  const left = await pages.get('late-publisher').evaluate(() => window.sluiceStop());
  assert(left === 200, `late-publisher DELETE returned ${left}, expected 200`);
  await waitHook('early-viewer', "s.receiving === false && s.state === 'connected'", 5000);
  await mkdir(OUT_DIR, { recursive: true });
  await pages.get('early-viewer').screenshot({ path: join(OUT_DIR, 'watch-waiting.png') });

  // A new publisher: the same viewer session, no renegotiation, video again.
  const framesBefore = (await hooksOf(pages.get('early-viewer'))).framesDecoded;
  await openPage(ctx, 'next-publisher', `${BASE}/publish/${room}?autostart=1`);
  await waitHook('next-publisher', "s.state === 'connected'");
  const connectedAt = Date.now();
  await waitHook('early-viewer', `s.receiving === true && s.framesDecoded > ${framesBefore}`, 10000);
  const switchMs = Date.now() - connectedAt;

  // Tidy up; statuses are not asserted here (test 1 covers DELETE).
  for (const label of ['early-viewer', 'next-publisher']) {
    await pages.get(label).evaluate(() => window.sluiceStop()).catch(() => {});
  }
  return { lateMs, switchMs };
}

/**
 * Test 4: a three-person conference. Every page publishes its fake camera
 * and decodes both others' video, and outlines whoever speaks (the fake
 * microphone beeps) until they mute; when one leaves, the others drop its tile;
 * when one joins again from a second tab, the first tab says so and leaves.
 */
async function testConference(ctx) {
  const room = `conf-${randomId()}`;
  const names = ['alice', 'bob', 'carol'];
  for (const name of names) {
    await openPage(ctx, name, `${BASE}/conference/${room}?name=${name}&autostart=1`);
  }
  const others = (me) => names.filter((n) => n !== me);
  for (const name of names) {
    const cond = others(name)
      .map((o) => `(s.tiles['${o}'] && s.tiles['${o}'].framesDecoded > 10 && s.tiles['${o}'].frameWidth > 0)`)
      .join(' && ');
    await waitHook(name, `s.state === 'connected' && ${cond}`, 30000);
  }
  // Chromium's fake microphone beeps every second: everyone speaks, and
  // every page outlines every tile. carol mutes: the others see her stop.
  const everyone = JSON.stringify(names);
  for (const name of names) {
    await waitHook(name, `${everyone}.every((n) => s.speakers.includes(n))
      && document.querySelectorAll('.tile.speaking').length === 3`, 10000);
  }
  await pages.get('carol').click('#mute');
  for (const name of ['alice', 'bob']) {
    await waitHook(name, `!s.speakers.includes('carol') && s.speakers.length === 2
      && document.querySelectorAll('.tile.speaking').length === 2`, 10000);
  }
  await sleep(1500);
  await mkdir(OUT_DIR, { recursive: true });
  await pages.get('alice').screenshot({ path: join(OUT_DIR, 'conference.png') });
  const alice = await hooksOf(pages.get('alice'));
  // carol leaves: the others' carol tiles go away, bob keeps decoding alice.
  await pages.get('carol').evaluate(() => window.sluiceLeave());
  await waitHook('alice', "!s.tiles['carol'] && !!s.tiles['bob']", 10000);
  const before = (await hooksOf(pages.get('bob'))).tiles.alice.framesDecoded;
  await waitHook('bob', `!s.tiles['carol'] && s.tiles['alice'].framesDecoded > ${before + 10}`, 10000);
  // bob joins again from a second tab: the first tab leaves and says why,
  // and alice's bob tile goes on with the second tab's video.
  const seen = (await hooksOf(pages.get('alice'))).tiles.bob.framesDecoded;
  await openPage(ctx, 'bob-again', `${BASE}/conference/${room}?name=bob&autostart=1`);
  await pages.get('bob').waitForFunction(
    "window.sluice.state === 'closed' && /another tab/.test(window.sluice.error || '')",
    null, { timeout: 15000, polling: 100 });
  if (!(await pages.get('bob').evaluate(() => !document.getElementById('join').disabled))) {
    throw new Error('bob: the replaced tab cannot join again');
  }
  await pages.get('bob').bringToFront(); // a background tab does not repaint
  await sleep(300); // the buttons' fade
  await pages.get('bob').screenshot({ path: join(OUT_DIR, 'conference-replaced.png') });
  await waitHook('alice', `s.tiles['bob'] && s.tiles['bob'].framesDecoded > ${seen + 30}`, 15000);
  for (const name of [...names, 'bob-again']) {
    const page = pages.get(name);
    await page.evaluate(() => window.sluiceLeave());
    await page.close();
    pages.delete(name);
  }
  return { width: alice.tiles.bob.frameWidth, height: alice.tiles.bob.frameHeight };
}

/**
 * Test 5: real video from the load tester. sluice-loadtest publishes the
 * shipped VP8 clips (simulcast); Chromium watches and decodes 1280x720.
 */
async function testClipPublisher(ctx) {
  const room = `clip-${randomId()}`;
  const tester = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'target', 'debug', 'sluice-loadtest');
  const child = spawn(tester, ['--url', BASE, '--room', room, '--publishers', '1', '--subscribers', '0',
    '--clips', '--simulcast', '--duration', '30s'], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', (d) => logs.push(`[sluice-loadtest] ${String(d).trim()}`));
  try {
    await sleep(1500);
    const viewer = await openPage(ctx, 'clip-viewer', `${BASE}/watch/${room}?autostart=1`);
    const s = await waitHook('clip-viewer', 's.frameWidth === 1280 && s.framesDecoded > 30', 20000);
    await mkdir(OUT_DIR, { recursive: true });
    await viewer.screenshot({ path: join(OUT_DIR, 'watch-clip.png') });
    await viewer.evaluate(() => window.sluiceStop());
    await viewer.close();
    pages.delete('clip-viewer');
    return { width: s.frameWidth, height: s.frameHeight };
  } finally {
    child.kill();
  }
}

async function main() {
  if (!BASE) throw new Error('SLUICE_URL is not set (e.g. SLUICE_URL=http://127.0.0.1:8080)');
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await ctx.grantPermissions(['camera', 'microphone']).catch(() => {});

  const t1 = await testPublishWatch(ctx);
  await testIndex(ctx);
  const t3 = await testViewerFirst(ctx);
  const t4 = await testConference(ctx);
  const t5 = await testClipPublisher(ctx);

  await closeBrowser();
  console.log(JSON.stringify({
    ok: true,
    first_frame_ms: t1.firstFrameMs,
    first_frame_ms_late_publisher: t3.lateMs,
    publisher_switch_ms: t3.switchMs,
    width: t1.width,
    height: t1.height,
    conference_tile: `${t4.width}x${t4.height}`,
    clip_video: `${t5.width}x${t5.height}`,
  }));
}

const hardTimer = setTimeout(() => fail(new Error(`hard timeout: test did not finish in ${HARD_TIMEOUT_MS / 1000} s`)),
  HARD_TIMEOUT_MS);

main()
  .then(() => {
    clearTimeout(hardTimer);
    process.exit(0);
  })
  .catch((err) => fail(err));
