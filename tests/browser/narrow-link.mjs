// A Chromium viewer behind a narrow path (see narrow-link.sh, which runs
// this in a network namespace with the server's outgoing media limited):
// publishes the fake camera (simulcast), watches it, and prints once a
// second what the viewer decodes; then one JSON line with the seconds
// spent on each resolution, the seconds without a new frame and the
// packets lost. A measurement tool, not part of the test suite.
//
//   BASE=http://127.0.0.1:18400 SECONDS_TO_WATCH=50 node narrow-link.mjs
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
  for (let t = 1; t <= SECONDS; t++) {
    await sleep(1000);
    const s = await viewer.evaluate(() => window.sluice);
    const size = `${s.frameWidth}x${s.frameHeight}`;
    console.log(`${t} s: ${size}, ${s.framesDecoded} frames, ${s.packetsLost} lost`);
    if (s.framesDecoded - frames < 5) frozen += 1;
    else bySize[size] = (bySize[size] || 0) + 1;
    frames = s.framesDecoded;
    lost = s.packetsLost;
  }
  console.log(JSON.stringify({ seconds: SECONDS, seconds_by_resolution: bySize, seconds_frozen: frozen, packets_lost: lost }));
} finally {
  await browser.close();
}
