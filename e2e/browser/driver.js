// driver.js drives Debian's headless Chromium (through playwright-core) against
// the oneport demo page for browser_test.go, which runs it inside a network
// namespace. It prints exactly one JSON line on stdout, the result, and page
// console output on stderr. Every wait is bounded by --timeout-ms.
//
//   node driver.js --base http://10.203.0.1:PORT --room ROOM --user-data-dir DIR
//                  [--scenario pubsub|party] [--timeout-ms 45000] [--res 320x240]
//                  [--screenshot-dir DIR]   (a PNG of each page at the end, pass or fail)
//                  [--min-frames N] [--min-audio-packets N]   (what "receiving" means; default 1)
//
// pubsub: page "pub" publishes (mode=publish), page "watch" watches (mode=watch);
//         the watcher must decode video frames and receive audio packets from
//         the publisher's participant id; then the publisher clicks Leave and
//         the watcher must drop that subscription.
// party:  three pages in mode=both; done when each decodes video and receives
//         audio from both others.
// simulcast: "pub" publishes three simulcast layers (q, h, f) at 960x540;
//         "watch" must receive the full layer (f) first, then, after asking
//         for layer q through the page (the sfu's layer API), decode frames of
//         at most half that width.
'use strict';

const { chromium } = require('playwright-core');

function parseArgs(argv) {
  const out = {
    base: '', room: '', userDataDir: '', scenario: 'pubsub', timeoutMs: 45000,
    res: '320x240', executablePath: '/usr/bin/chromium', screenshotDir: '',
    minFrames: 1, minAudioPackets: 1,
  };
  const keys = {
    '--base': 'base', '--room': 'room', '--user-data-dir': 'userDataDir', '--scenario': 'scenario',
    '--timeout-ms': 'timeoutMs', '--res': 'res', '--chromium': 'executablePath',
    '--screenshot-dir': 'screenshotDir', '--min-frames': 'minFrames', '--min-audio-packets': 'minAudioPackets',
  };
  const numeric = new Set(['timeoutMs', 'minFrames', 'minAudioPackets']);
  for (let i = 0; i < argv.length; i += 2) {
    const key = keys[argv[i]];
    if (!key || i + 1 >= argv.length) throw new Error('bad argument ' + argv[i]);
    out[key] = numeric.has(key) ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!out.base || !out.room || !out.userDataDir) throw new Error('--base, --room and --user-data-dir are required');
  if (!(out.timeoutMs > 0)) throw new Error('--timeout-ms must be positive');
  return out;
}

const POLL_MS = 250;

// poll evaluates window.oneportStats() in page until done(stats) is true or
// the deadline passes; it returns the last stats either way.
async function poll(page, deadline, done) {
  let last = null;
  for (;;) {
    last = await page.evaluate(() => (window.oneportStats ? window.oneportStats() : null));
    if (last && done(last)) return { ok: true, stats: last };
    if (Date.now() + POLL_MS > deadline) return { ok: false, stats: last };
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function published(s) {
  return Boolean(s.publish && s.publish.participant && s.publish.state === 'connected' &&
    s.publish.video && s.publish.video.framesEncoded > 0);
}

let want = { frames: 1, audioPackets: 1 };

function receiving(s, publisher) {
  return s.remotes.some((r) => r.publisher === publisher && r.state === 'connected' &&
    r.video && r.video.framesDecoded >= want.frames && r.audio && r.audio.packetsReceived >= want.audioPackets);
}

async function openPage(ctx, name, url) {
  // A persistent context starts with one blank tab: use it first.
  const blank = ctx.pages().find((p) => p.url() === 'about:blank' && !p.oneportName);
  const page = blank || await ctx.newPage();
  page.oneportName = name;
  page.on('console', (m) => process.stderr.write(`[${name}] ${m.type()}: ${m.text()}\n`));
  page.on('pageerror', (e) => process.stderr.write(`[${name}] pageerror: ${e.message}\n`));
  page.on('response', (r) => {
    if (r.status() >= 400) process.stderr.write(`[${name}] ${r.request().method()} ${r.url()}: ${r.status()}\n`);
  });
  const res = await page.goto(url, { waitUntil: 'load' });
  if (!res || res.status() !== 200) throw new Error(`GET ${url}: ${res ? res.status() : 'no response'}`);
  return page;
}

async function scenarioPubSub(ctx, a, deadline, result) {
  const q = `room=${encodeURIComponent(a.room)}&res=${a.res}`;
  const pub = await openPage(ctx, 'pub', `${a.base}/?${q}&mode=publish`);
  const p = await poll(pub, deadline, published);
  result.pages.pub = p.stats;
  result.timings.publishedMs = Date.now() - result.startedAt;
  if (!p.ok) throw new Error('publisher did not connect and encode video in time');
  const id = p.stats.publish.participant;

  const watch = await openPage(ctx, 'watch', `${a.base}/?${q}&mode=watch`);
  const w = await poll(watch, deadline, (s) => receiving(s, id));
  result.pages.watch = w.stats;
  result.pages.pub = await pub.evaluate(() => window.oneportStats());
  result.timings.receivingMs = Date.now() - result.startedAt;
  if (!w.ok) throw new Error(`watcher did not decode video and receive audio from ${id} in time`);

  // The publisher leaves (Leave button: DELETE of its WHIP resource); the
  // watcher must drop its subscription when the events stream says so.
  await pub.click('#leave');
  const gone = await poll(watch, deadline, (s) => !s.remotes.some((r) => r.publisher === id));
  result.pages.watchAfterLeave = gone.stats;
  result.timings.leftMs = Date.now() - result.startedAt;
  if (!gone.ok) throw new Error(`watcher still watches ${id} after it left`);
}

async function scenarioParty(ctx, a, deadline, result) {
  const q = `room=${encodeURIComponent(a.room)}&res=${a.res}&mode=both`;
  const names = ['p1', 'p2', 'p3'];
  const pages = [];
  const ids = [];
  for (const name of names) {
    const page = await openPage(ctx, name, `${a.base}/?${q}`);
    const p = await poll(page, deadline, published);
    result.pages[name] = p.stats;
    if (!p.ok) throw new Error(`${name} did not connect and encode video in time`);
    pages.push(page);
    ids.push(p.stats.publish.participant);
  }
  result.timings.publishedMs = Date.now() - result.startedAt;
  for (let i = 0; i < pages.length; i++) {
    const others = ids.filter((_, j) => j !== i);
    const w = await poll(pages[i], deadline, (s) => others.every((id) => receiving(s, id)));
    result.pages[names[i]] = w.stats;
    if (!w.ok) throw new Error(`${names[i]} did not receive both others (${others.join(', ')}) in time`);
  }
  result.timings.receivingMs = Date.now() - result.startedAt;
}

function remoteOf(s, publisher) {
  return s.remotes.find((r) => r.publisher === publisher) || null;
}

async function scenarioSimulcast(ctx, a, deadline, result) {
  // 960x540 is the smallest capture Chromium sends three layers of, and the
  // cheapest to encode and decode on a shared machine.
  const q = `room=${encodeURIComponent(a.room)}&res=960x540`;
  const pub = await openPage(ctx, 'pub', `${a.base}/?${q}&mode=publish&simulcast=1`);
  // Chromium sends three VP8 simulcast layers only from 960x540 up (fewer
  // for smaller captures), and each only once its bandwidth estimate allows.
  const p = await poll(pub, deadline, (s) => published(s) && s.publish.layers.length === 3 &&
    s.publish.layers.every((l) => l.bytesSent > 0));
  result.pages.pub = p.stats;
  result.timings.publishedMs = Date.now() - result.startedAt;
  if (!p.ok) throw new Error('publisher did not send three simulcast layers in time');
  const id = p.stats.publish.participant;

  const watch = await openPage(ctx, 'watch', `${a.base}/?${q}&mode=watch`);
  const fullWidth = Math.max(...p.stats.publish.layers.map((l) => l.width));
  const full = await poll(watch, deadline, (s) => receiving(s, id) && remoteOf(s, id).video.frameWidth >= fullWidth);
  result.pages.watch = full.stats;
  result.timings.receivingMs = Date.now() - result.startedAt;
  if (!full.ok) throw new Error(`watcher did not receive the ${fullWidth}-wide layer from ${id} in time`);

  const before = remoteOf(full.stats, id).video.framesDecoded;
  result.layerAnswer = await watch.evaluate((pid) => window.oneportSelectLayer(pid, 'q'), id);
  const low = await poll(watch, deadline, (s) => {
    const r = remoteOf(s, id);
    return r && r.video.frameWidth > 0 && r.video.frameWidth <= fullWidth / 2 &&
      r.video.framesDecoded >= before + want.frames;
  });
  result.pages.watchLow = low.stats;
  result.timings.switchedMs = Date.now() - result.startedAt;
  if (!low.ok) throw new Error(`watcher did not switch to layer q of ${id} in time`);
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  want = { frames: Math.max(1, a.minFrames), audioPackets: Math.max(1, a.minAudioPackets) };
  const startedAt = Date.now();
  const deadline = startedAt + a.timeoutMs;
  // A last resort so the driver never outlives its budget, whatever hangs.
  const killer = setTimeout(() => {
    process.stdout.write(JSON.stringify({ ok: false, error: 'driver deadline exceeded' }) + '\n');
    process.exit(2);
  }, a.timeoutMs + 10000);
  killer.unref();

  const result = { ok: false, scenario: a.scenario, startedAt, timings: {}, pages: {} };
  let ctx = null;
  try {
    ctx = await chromium.launchPersistentContext(a.userDataDir, {
      executablePath: a.executablePath,
      headless: true,
      timeout: Math.max(1000, deadline - Date.now()),
      args: [
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        '--autoplay-policy=no-user-gesture-required',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-quic',
        // The server is plain http on the veth address, not a secure
        // context, where getUserMedia is unavailable without this.
        '--unsafely-treat-insecure-origin-as-secure=' + new URL(a.base).origin,
      ],
    });
    ctx.setDefaultTimeout(Math.max(1000, deadline - Date.now()));
    result.timings.launchedMs = Date.now() - startedAt;
    result.browserVersion = ctx.browser() ? ctx.browser().version() : null;
    if (a.scenario === 'pubsub') await scenarioPubSub(ctx, a, deadline, result);
    else if (a.scenario === 'party') await scenarioParty(ctx, a, deadline, result);
    else if (a.scenario === 'simulcast') await scenarioSimulcast(ctx, a, deadline, result);
    else throw new Error('unknown scenario ' + a.scenario);
    result.ok = true;
  } catch (err) {
    result.error = err && err.message ? err.message : String(err);
  } finally {
    if (ctx && a.screenshotDir) {
      for (const [i, page] of ctx.pages().entries()) {
        const file = `${a.screenshotDir}/${a.scenario}-${i}.png`;
        await page.screenshot({ path: file, fullPage: true, timeout: 5000 })
          .then(() => process.stderr.write(`screenshot ${file}\n`))
          .catch((e) => process.stderr.write(`screenshot ${file}: ${e.message}\n`));
      }
    }
    if (ctx) await ctx.close().catch(() => {});
  }
  result.timings.totalMs = Date.now() - startedAt;
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = result.ok ? 0 : 1;
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.message || err) }) + '\n');
  process.exitCode = 1;
});
