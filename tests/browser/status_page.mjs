// Opens caregate's status page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), checks every number it renders against a /status JSON document, and takes a
// screenshot, checked to be a real picture (PNG, not tiny, not one flat colour).
//
//   node status_page.mjs --url http://127.0.0.1:PORT/ --expected status.json --screenshot out.png \
//     --token TOKEN
//
// The page asks for the operator token (HTTP Basic, token as password): the browser answers the
// login prompt with it, as an operator would; a first visit without it must be refused.
//
// Prints one JSON line with what it checked; exits 1 with the failures otherwise.
// Run by tests/it/status_page.rs; `npm ci --prefix tests/browser` installs playwright-core.

import { readFileSync, statSync } from 'node:fs';
import { chromium } from 'playwright-core';

function args() {
  const out = {};
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) out[a[i].replace(/^--/, '')] = a[i + 1];
  for (const k of ['url', 'expected', 'screenshot', 'token']) {
    if (!out[k]) throw new Error(`missing --${k}`);
  }
  return out;
}

const opts = args();
const status = JSON.parse(readFileSync(opts.expected, 'utf8'));
const failures = [];
const check = (what, got, want) => {
  if (String(got) !== String(want)) failures.push(`${what}: page shows ${JSON.stringify(got)}, /status has ${JSON.stringify(want)}`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
let result;
try {
  const anonymous = await browser.newPage();
  // Headless Chromium has no one to answer the login prompt: it gives up the navigation with
  // ERR_INVALID_AUTH_CREDENTIALS (a 401 that offered Basic) rather than showing the page.
  let refused;
  try {
    refused = (await anonymous.goto(opts.url, { waitUntil: 'load' })).status();
  } catch (e) {
    refused = /ERR_INVALID_AUTH_CREDENTIALS/.test(String(e)) ? 401 : String(e);
  }
  check('HTTP status without the token', refused, 401);
  await anonymous.close();
  const page = await browser.newPage({
    viewport: { width: 1280, height: 800 },
    httpCredentials: { username: 'operator', password: opts.token },
  });
  const origin = new URL(opts.url).origin;
  const foreign = [];
  const consoleErrors = [];
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) foreign.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  const resp = await page.goto(opts.url, { waitUntil: 'load' });
  check('HTTP status', resp.status(), 200);
  check('content type', (resp.headers()['content-type'] || '').split(';')[0], 'text/html');
  check('title', await page.title(), 'caregate status');
  check('refresh', await page.getAttribute('meta[http-equiv="refresh"]', 'content'), '5');
  check('version', await page.textContent('[data-field="version"]'), status.version);

  const sum = (xs, f) => xs.reduce((n, x) => n + f(x), 0);
  const totals = {
    received: sum(status.sources, (s) => s.received),
    queued: sum(status.tenants, (t) => t.queued),
    forwarded: sum(status.tenants, (t) => t.forwarded),
    dead_letters: sum(status.tenants, (t) => t.dead_letters),
    rejected: sum(status.sources, (s) => s.rejected),
  };
  for (const [k, v] of Object.entries(totals)) {
    check(`total ${k}`, await page.textContent(`[data-total="${k}"]`), v);
  }

  const cellOf = (row) => async (field) => (await row.locator(`[data-field="${field}"]`).textContent()).trim();
  check('source rows', await page.locator('#sources tbody tr').count(), status.sources.length);
  for (const s of status.sources) {
    const cell = cellOf(page.locator(`#sources tr[data-source="${s.source}"]`));
    for (const f of ['kind', 'tenant', 'received', 'queued', 'forwarded', 'dead_letters', 'rejected', 'open_connections']) {
      check(`source ${s.source} ${f}`, await cell(f), s[f]);
    }
    check(`source ${s.source} last_received_at`, await cell('last_received_at'), s.last_received_at ?? '-');
  }

  check('tenant rows', await page.locator('#upstreams tbody tr').count(), status.tenants.length);
  const colours = {};
  for (const t of status.tenants) {
    const row = page.locator(`#upstreams tr[data-tenant="${t.tenant}"]`);
    const cell = cellOf(row);
    for (const f of ['queued', 'ready', 'forwarded', 'dead_letters']) {
      check(`tenant ${t.tenant} ${f}`, await cell(f), t[f]);
    }
    const state = t.upstream ? (t.upstream.state || 'idle') : 'none';
    check(`tenant ${t.tenant} state`, await cell('state'), state);
    check(`tenant ${t.tenant} endpoint`, await cell('endpoint'), t.upstream ? t.upstream.endpoint : '(stored only)');
    if (t.upstream) {
      const err = t.upstream.last_error
        ? (t.upstream.last_error_at ? `${t.upstream.last_error} at ${t.upstream.last_error_at}` : t.upstream.last_error)
        : '-';
      check(`tenant ${t.tenant} last_error`, await cell('last_error'), err);
      check(`tenant ${t.tenant} failing_since`, await cell('failing_since'), t.upstream.failing_since ?? '-');
    }
    colours[t.tenant] = await row.locator('.badge').evaluate((e) => getComputedStyle(e).backgroundColor);
    if (state === 'ok') check(`tenant ${t.tenant} badge colour`, colours[t.tenant], 'rgb(46, 125, 50)');
  }

  const alerting = status.tenants.filter((t) => t.upstream && t.upstream.alert_active).map((t) => t.tenant);
  check('active alerts', await page.locator('ul.alerts li').count(), alerting.length);
  if (alerting.length === 0) check('no-alert text', await page.textContent('[data-field="alerts"]'), 'none');

  check('requests to other origins', foreign.join(' '), '');
  check('console errors', consoleErrors.join(' '), '');

  await page.screenshot({ path: opts.screenshot, fullPage: true });
  const png = readFileSync(opts.screenshot);
  const size = statSync(opts.screenshot).size;
  check('PNG signature', png.subarray(0, 8).toString('hex'), '89504e470d0a1a0a');
  if (size < 10_000) failures.push(`screenshot is only ${size} bytes`);
  // Decode the PNG in the browser and measure it: a blank or one-colour page fails.
  const stats = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    const colours = new Set();
    let sum = 0; let sq = 0; let n = 0;
    for (let i = 0; i < d.length; i += 4 * 7) {
      const l = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
      sum += l; sq += l * l; n += 1;
      if (colours.size < 5000) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
    const mean = sum / n;
    return { width: c.width, height: c.height, distinct_colours: colours.size, luma_stddev: Math.sqrt(sq / n - mean * mean) };
  }, png.toString('base64'));
  if (stats.width < 800 || stats.height < 400) failures.push(`screenshot is ${stats.width}x${stats.height}`);
  if (stats.distinct_colours < 20) failures.push(`screenshot has only ${stats.distinct_colours} colours`);
  if (stats.luma_stddev < 5) failures.push(`screenshot is nearly flat (luma stddev ${stats.luma_stddev.toFixed(1)})`);
  result = { ok: failures.length === 0, screenshot: opts.screenshot, bytes: size, ...stats, badge_colours: colours, failures };
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
