// A Chromium viewer behind a narrow path (see narrow-link.sh, which runs
// this in a network namespace with the server's outgoing media limited):
// publishes the fake camera (simulcast), watches it, and prints once a
// second what the viewer decodes; then one JSON line with the seconds
// spent on each resolution, the seconds without a new frame and the
// packets lost. With CHECK=1 it fails (exit 1) unless the viewer ends on a
// layer below the best and decodes at least 5 frames a second over the
// last 10 s, as a viewer whose layer fits its path does.
//
//   BASE=http://127.0.0.1:18400 SECONDS_TO_WATCH=50 [CHECK=1] node narrow-link.mjs
import { chromium } from 'playwright-core';

const BASE = process.env.BASE;
const SECONDS = Number(process.env.SECONDS_TO_WATCH || 50);
const ARGS = ['--no-sandbox', '--disable-gpu', '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required'];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ARGS,
});
try {
  const ctx = await browser.newContext();
  const publisher = await ctx.newPage();
  await publisher.goto(`${BASE}/publish/narrow?autostart=1`);
  await sleep(6000); // every simulcast layer up
  const viewer = await ctx.newPage();
  await viewer.goto(`${BASE}/watch/narrow?autostart=1`);
  const bySize = {};
  let frozen = 0;
  let frames = 0;
  let lost = 0;
  let width = 0;
  const history = [];
  for (let t = 1; t <= SECONDS; t++) {
    await sleep(1000);
    const s = await viewer.evaluate(() => window.sluice);
    const size = `${s.frameWidth}x${s.frameHeight}`;
    console.log(`${t} s: ${size}, ${s.framesDecoded} frames, ${s.packetsLost} lost`);
    if (s.framesDecoded - frames < 5) frozen += 1;
    else bySize[size] = (bySize[size] || 0) + 1;
    frames = s.framesDecoded;
    lost = s.packetsLost;
    width = s.frameWidth;
    history.push(frames);
  }
  console.log(JSON.stringify({ seconds: SECONDS, seconds_by_resolution: bySize, seconds_frozen: frozen, packets_lost: lost }));
  if (process.env.CHECK === '1') {
    const recent = frames - history[Math.max(0, history.length - 11)];
    if (width === 0 || width >= 1280 || recent < 50) {
      console.log(`FAIL: the viewer ends at width ${width}, ${recent} frames in the last 10 s`);
      process.exitCode = 1;
    }
  }
} finally {
  await browser.close();
}
