// Real sign-ins without a browser, for bench/liveness.sh: for each person, the
// Authorization Code flow as a browser walks it, over HTTP: mailauthd's /login, the
// provider's login and consent forms (oidc-provider's dev interactions), the callback,
// until mailauthd shows the account page. So every mailbox gets its refresh token the way
// a person's sign-in gives it one: issued by the provider, stored sealed by mailauthd.
//
// Usage: node liveness_signin.mjs --base URL --prefix NAME --count N [--first 1]
//                                 [--concurrency 8] [--width 5]
// Signs in NAME00001 … (the number zero-padded to --width). Prints one JSON line:
// { "signed_in": N, "failed": N, "seconds": S, "per_second": R, "first_errors": [...] }.
// Exits 1 when any sign-in failed.

import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    base: { type: 'string' },
    prefix: { type: 'string', default: 'user' },
    count: { type: 'string', default: '1' },
    first: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '8' },
    width: { type: 'string', default: '5' },
  },
});
const base = opt.base.replace(/\/$/, '');
const count = Number(opt.count);
const first = Number(opt.first);
const width = Number(opt.width);

function decodeEntities(s) {
  return s
    .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16)))
    .replace(/&#([0-9]+);/g, (_, d) => String.fromCodePoint(Number(d)))
    .replace(/&quot;/g, '"')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

// One cookie jar per origin; paths are ignored: each person's walk has its own jars, and
// the provider names the cookies of its steps apart.
function remember(jar, res) {
  for (const c of res.headers.getSetCookie()) {
    const pair = c.split(';', 1)[0];
    const i = pair.indexOf('=');
    const name = pair.slice(0, i).trim();
    if (/;\s*max-age=0/i.test(c) || /expires=Thu, 01 Jan 1970/i.test(c)) jar.delete(name);
    else jar.set(name, pair.slice(i + 1));
  }
}

async function signIn(login) {
  const jars = new Map();
  let url = `${base}/login`;
  let body = null;
  for (let hop = 0; hop < 20; hop += 1) {
    const origin = new URL(url).origin;
    if (!jars.has(origin)) jars.set(origin, new Map());
    const jar = jars.get(origin);
    const headers = { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') };
    if (body) headers['content-type'] = 'application/x-www-form-urlencoded';
    const res = await fetch(url, { method: body ? 'POST' : 'GET', body, headers, redirect: 'manual' });
    remember(jar, res);
    if (res.status >= 300 && res.status < 400) {
      await res.arrayBuffer();
      url = new URL(res.headers.get('location'), url).toString();
      body = null;
      continue;
    }
    const text = await res.text();
    if (url.startsWith(base)) {
      if (res.status === 200 && text.includes('id="mailbox-address"')) return;
      const reason = (text.match(/id="reason"[^>]*>([^<]*)</) ?? [])[1] ?? text.slice(0, 200);
      throw new Error(`mailauthd answered ${res.status} at ${new URL(url).pathname}: ${reason.trim()}`);
    }
    // The provider's page: its one form (login, then consent), filled in and sent.
    const form = text.match(/<form[^>]*action="([^"]+)"[^>]*method="post"[^>]*>([\s\S]*?)<\/form>/i);
    if (!form) throw new Error(`no form on the provider's page ${url} (status ${res.status})`);
    const fields = new URLSearchParams();
    for (const m of form[2].matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"/g)) {
      fields.append(decodeEntities(m[1]), decodeEntities(m[2]));
    }
    if (/name="login"/.test(form[2])) {
      fields.append('login', login);
      fields.append('password', 'any-password');
    }
    url = new URL(decodeEntities(form[1]), url).toString();
    body = fields.toString();
  }
  throw new Error('more than 20 steps');
}

let next = 0;
let done = 0;
let failed = 0;
const errors = [];
const started = process.hrtime.bigint();
async function worker() {
  while (next < count) {
    const n = first + next;
    next += 1;
    const login = `${opt.prefix}${String(n).padStart(width, '0')}`;
    try {
      await signIn(login);
      done += 1;
    } catch (e) {
      failed += 1;
      if (errors.length < 5) errors.push(`${login}: ${e.message}`);
    }
  }
}
await Promise.all(Array.from({ length: Number(opt.concurrency) }, worker));
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
console.log(
  JSON.stringify({
    signed_in: done,
    failed,
    seconds: Number(seconds.toFixed(2)),
    per_second: Number((done / seconds).toFixed(1)),
    first_errors: errors,
  }),
);
process.exit(failed ? 1 : 0);
