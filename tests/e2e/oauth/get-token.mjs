// Gets access tokens from the test OpenID provider (tests/e2e/oidc/provider.mjs) the way a
// webmail does: the authorization-code flow for a test account, through the provider's
// own sign-in and consent pages, spoken as plain HTTP (a cookie jar and the pages' forms;
// no browser). Prints one JSON line.
//
// Usage:
//   node get-token.mjs sign-in --issuer URL --client ID --secret S --redirect URL --login NAME
//                      [--resource URL]... [--scope "openid email profile offline_access"]
//                      [--auth-method client_secret_post|client_secret_basic]
//     {"sub":…, "opaque":"<access token>", "resources":{"<URL>":"<JWT access token>",…},
//      "scope":…, "refresh_token":…}
//     The code is exchanged for the first --resource (or, with none, for UserInfo); the
//     refresh token then gets a token for each other resource and one without a resource,
//     which the provider issues opaque.
//   node get-token.mjs site-sign-in --site URL --login NAME
//     signs NAME in at a relying party's page (mailauthd's web page: URL/login, the
//     provider's pages, URL/callback), as the OIDC suites do in a browser, so that the
//     relying party provisions the mailbox; {"address":…, "url":…} (address: what the
//     account page shows as #mailbox-address, empty when it shows none).
//   node get-token.mjs revoke --issuer URL --client ID --secret S --token T
//     {"revoked":true} once the provider's revocation endpoint answered 200.
//   node get-token.mjs introspect --issuer URL --client ID --secret S --token T
//     the provider's RFC 7662 answer (for the test's own diagnostics).
//
// Exits non-zero with {"error":…} on the first step that did not go as a sign-in should.

import crypto from 'node:crypto';
import { parseArgs } from 'node:util';

const { positionals, values: opt } = parseArgs({
  allowPositionals: true,
  options: {
    issuer: { type: 'string' },
    client: { type: 'string', default: 'webmail' },
    secret: { type: 'string' },
    redirect: { type: 'string' },
    login: { type: 'string' },
    password: { type: 'string', default: 'any-password' },
    resource: { type: 'string', multiple: true, default: [] },
    scope: { type: 'string', default: 'openid email profile offline_access' },
    'auth-method': { type: 'string', default: 'client_secret_post' },
    token: { type: 'string' },
    site: { type: 'string' },
  },
});

class Failure extends Error {}
const fail = (what, detail) => {
  throw new Failure(detail === undefined ? what : `${what}: ${String(detail).slice(0, 600)}`);
};

// The provider's cookies (interaction, resume, session), by name. They are path-scoped
// at the provider, but each step of one sign-in needs only the newest of each name.
const jar = new Map();
function keepCookies(response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    if (/expires=Thu, 01 Jan 1970/i.test(line) || value === '') jar.delete(name);
    else jar.set(name, value);
  }
}
const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');

async function request(url, init = {}) {
  const response = await fetch(url, {
    ...init,
    redirect: 'manual',
    headers: { ...(init.headers ?? {}), cookie: cookieHeader() },
  });
  keepCookies(response);
  return response;
}

// Follows the provider's redirects until it shows a page or sends the browser to the
// client's redirect URL; returns { page, url } or { callback }.
async function follow(response, url) {
  for (let hops = 0; hops < 20; hops += 1) {
    if (response.status < 300 || response.status >= 400) {
      const page = await response.text();
      if (response.status !== 200) fail(`${url} answered ${response.status}`, page);
      return { page, url };
    }
    const next = new URL(response.headers.get('location'), url).toString();
    if (next.startsWith(opt.redirect)) return { callback: new URL(next) };
    url = next;
    response = await request(url);
  }
  return fail('too many redirects at the provider');
}

// The provider's sign-in and consent forms, filled in as NAME, until the provider sends
// the browser back to the client (at.callback).
async function throughProvider(at) {
  for (let step = 0; step < 4 && !at.callback; step += 1) {
    const form = formOf(at.page, at.url);
    const fields = new URLSearchParams({ prompt: form.prompt });
    if (form.prompt === 'login') {
      fields.set('login', opt.login);
      fields.set('password', opt.password);
    }
    const response = await request(form.action, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: fields,
    });
    at = await follow(response, form.action);
  }
  if (!at.callback) fail('the provider never sent the browser back to the client');
  return at.callback;
}

async function siteSignIn() {
  for (const need of ['site', 'login']) {
    if (!opt[need]) fail(`--${need} is required`);
  }
  opt.redirect = `${opt.site}/callback`;
  const start = `${opt.site}/login`;
  const callback = await throughProvider(await follow(await request(start), start));
  let url = callback.toString();
  let response = await request(url);
  for (let hops = 0; hops < 10 && response.status >= 300 && response.status < 400; hops += 1) {
    url = new URL(response.headers.get('location'), url).toString();
    response = await request(url);
  }
  const page = await response.text();
  const address = page.match(/id="mailbox-address"[^>]*>([^<]*)</);
  return { address: address ? address[1].trim() : '', url, status: response.status };
}

function formOf(page, url) {
  const action = page.match(/<form[^>]*action="([^"]+)"/);
  const prompt = page.match(/name="prompt" value="([^"]+)"/);
  if (!action || !prompt) fail(`no sign-in or consent form at ${url}`, page);
  return { action: new URL(action[1].replace(/&amp;/g, '&'), url).toString(), prompt: prompt[1] };
}

function clientAuth(body) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (opt['auth-method'] === 'client_secret_basic') {
    const enc = (s) => encodeURIComponent(s);
    headers.authorization = `Basic ${Buffer.from(`${enc(opt.client)}:${enc(opt.secret)}`).toString('base64')}`;
  } else {
    body.set('client_id', opt.client);
    body.set('client_secret', opt.secret);
  }
  return headers;
}

async function post(endpoint, fields) {
  const body = new URLSearchParams();
  for (const [k, v] of Object.entries(fields)) {
    for (const one of Array.isArray(v) ? v : [v]) body.append(k, one);
  }
  const headers = clientAuth(body);
  const response = await fetch(endpoint, { method: 'POST', headers, body });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, json, text };
}

async function discovery() {
  const response = await fetch(`${opt.issuer}/.well-known/openid-configuration`);
  if (response.status !== 200) fail('discovery answered', response.status);
  return response.json();
}

async function signIn() {
  for (const need of ['issuer', 'secret', 'redirect', 'login']) {
    if (!opt[need]) fail(`--${need} is required`);
  }
  const meta = await discovery();
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(12).toString('base64url');
  const auth = new URL(meta.authorization_endpoint);
  auth.searchParams.set('client_id', opt.client);
  auth.searchParams.set('response_type', 'code');
  auth.searchParams.set('redirect_uri', opt.redirect);
  auth.searchParams.set('scope', opt.scope);
  auth.searchParams.set('state', state);
  auth.searchParams.set('code_challenge', challenge);
  auth.searchParams.set('code_challenge_method', 'S256');
  // offline_access is granted only with a consent prompt.
  auth.searchParams.set('prompt', 'consent');
  for (const r of opt.resource) auth.searchParams.append('resource', r);

  const callback = await throughProvider(await follow(await request(auth.toString()), auth.toString()));
  const cb = callback.searchParams;
  if (cb.get('error')) fail('the provider refused the sign-in', `${cb.get('error')} ${cb.get('error_description')}`);
  if (cb.get('state') !== state) fail('the callback carries another state');
  const code = cb.get('code');
  if (!code) fail('the callback has no code', callback);

  const [first, ...others] = opt.resource;
  const exchanged = await post(meta.token_endpoint, {
    grant_type: 'authorization_code',
    code,
    redirect_uri: opt.redirect,
    code_verifier: verifier,
    ...(first ? { resource: first } : {}),
  });
  if (exchanged.status !== 200 || !exchanged.json?.access_token) fail('the code exchange failed', exchanged.text);
  const out = { sub: undefined, opaque: undefined, resources: {}, scope: undefined };
  let refresh = exchanged.json.refresh_token;
  if (first) out.resources[first] = exchanged.json.access_token;
  else out.opaque = exchanged.json.access_token;
  out.scope = exchanged.json.scope;
  out.id_token = exchanged.json.id_token;
  if (out.id_token) {
    out.sub = JSON.parse(Buffer.from(out.id_token.split('.')[1], 'base64url').toString()).sub;
  }

  const wanted = first ? [...others, undefined] : others;
  for (const resource of wanted) {
    if (!refresh) fail('the code exchange returned no refresh token (offline_access not granted?)');
    const refreshed = await post(meta.token_endpoint, {
      grant_type: 'refresh_token',
      refresh_token: refresh,
      ...(resource ? { resource } : {}),
    });
    if (refreshed.status !== 200 || !refreshed.json?.access_token) {
      fail(`the refresh for ${resource ?? 'an opaque token'} failed`, refreshed.text);
    }
    refresh = refreshed.json.refresh_token ?? refresh;
    if (resource) out.resources[resource] = refreshed.json.access_token;
    else {
      out.opaque = refreshed.json.access_token;
      out.scope = refreshed.json.scope;
    }
  }
  out.refresh_token = refresh;
  return out;
}

async function revoke() {
  if (!opt.token) fail('--token is required');
  const meta = await discovery();
  const answer = await post(meta.revocation_endpoint, { token: opt.token });
  if (answer.status !== 200) fail('the revocation endpoint answered', `${answer.status} ${answer.text}`);
  return { revoked: true };
}

async function introspect() {
  if (!opt.token) fail('--token is required');
  const meta = await discovery();
  const answer = await post(meta.introspection_endpoint, { token: opt.token });
  if (answer.status !== 200 || !answer.json) fail('the introspection endpoint answered', `${answer.status} ${answer.text}`);
  return answer.json;
}

const actions = { 'sign-in': signIn, 'site-sign-in': siteSignIn, revoke, introspect };
try {
  const action = actions[positionals[0]];
  if (!action) fail(`unknown action ${positionals[0]}; one of ${Object.keys(actions).join(', ')}`);
  console.log(JSON.stringify(await action()));
} catch (err) {
  console.log(JSON.stringify({ error: err instanceof Failure ? err.message : String(err?.stack ?? err) }));
  process.exitCode = 1;
}
