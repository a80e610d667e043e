// Drives Debian's Chromium (never a downloaded browser) through mailauthd's web page and
// the OpenID provider, as a person would, and prints what it saw as one JSON line.
//
// Usage: node browser.mjs ACTION --base URL --shots DIR --prefix NAME [options]
//   signin        sign in through the provider as --login; report the page reached
//                 (--replay: then send the provider's callback, code and all, once more)
//   app-password  sign in, create an app password --name for --protocols, report the secret
//   revoke        sign in, revoke the app password named --name
//   signout       sign in, sign out (RP-initiated logout at the provider)
//   local         sign in with the password form (--login is the address, --password)
//   bad-input     callbacks without state, with a provider error, a form without CSRF
//   device        sign in, set up a device of --kind (apple, android, other) for
//                 --protocols; apple: save the downloaded profile in --out and try its
//                 link again; android: screenshot the QR code; then reload the result page
//   shared-session  sign in through --base, look at --other (another daemon, same host);
//                 write --out.ready and wait for --out.go (the daemon is restarted
//                 meanwhile), look at both again, end the session at the provider's
//                 end-session endpoint (--issuer; not through the page), write
//                 --out.ended and wait for --out.checked, then look at both once more
//   hold          sign in, write the file --out/hold-ready, wait (up to 5 min) for the file
//                 --out/hold-release, reload the page; report both pages (before, after)
//   roundcube     open the webmail at --base (Roundcube), follow its OAuth login button, sign
//                 in at the provider as --login; report the page reached (the INBOX listing,
//                 or the login page and its message); with --subject, then compose a message
//                 to --to with that subject, send it, and wait (up to 30 s) for it to be
//                 listed in the INBOX; report the Sent folder too

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const { positionals, values: opt } = parseArgs({
  allowPositionals: true,
  options: {
    base: { type: 'string' },
    shots: { type: 'string' },
    prefix: { type: 'string', default: 'page' },
    login: { type: 'string' },
    password: { type: 'string', default: 'any-password' },
    name: { type: 'string', default: 'laptop' },
    protocols: { type: 'string', default: 'imap' },
    replay: { type: 'boolean', default: false },
    issuer: { type: 'string' },
    kind: { type: 'string', default: 'other' },
    out: { type: 'string' },
    other: { type: 'string' },
    to: { type: 'string' },
    subject: { type: 'string' },
  },
});
const action = positionals[0];
fs.mkdirSync(opt.shots, { recursive: true });

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mailauthd-e2e-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // Nothing but loopback: no name resolves, so nothing leaves the machine.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  ],
  viewport: { width: 390, height: 844 },
  timeout: 30000,
});

// The provider's dev pages link a web font; the test never leaves loopback.
await context.route('**/*', (route) => {
  const host = new URL(route.request().url()).hostname;
  if (host === '127.0.0.1' || host === 'localhost' || host === '[::1]') return route.continue();
  return route.abort();
});

const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(20000);
let shotNo = 0;

async function shot(label) {
  shotNo += 1;
  const file = path.join(opt.shots, `${opt.prefix}-${String(shotNo).padStart(2, '0')}-${label}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

async function text(selector) {
  const el = await page.$(selector);
  return el ? (await el.innerText()).trim() : null;
}

async function report(extra = {}) {
  return {
    url: page.url(),
    title: await page.title(),
    reason: await text('#reason'),
    address: await text('#mailbox-address'),
    alert: await text('[role=alert]'),
    status: await text('[role=status]'),
    ...extra,
  };
}

// Sign in through the provider: the dev login form, then consent when it asks.
async function signIn() {
  await page.goto(opt.base + '/');
  await shot('sign-in');
  await page.click('#provider-sign-in');
  await page.waitForSelector('input[name=login]');
  await shot('provider-login');
  await page.fill('input[name=login]', opt.login);
  await page.fill('input[name=password]', opt.password);
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
  for (let i = 0; i < 3 && !page.url().startsWith(opt.base); i += 1) {
    const consent = await page.$('button[type=submit]');
    if (!consent) break;
    await shot('provider-consent');
    await Promise.all([page.waitForLoadState('load'), consent.click()]);
  }
  await page.waitForURL((u) => u.toString().startsWith(opt.base), { timeout: 20000 });
  await page.waitForLoadState('load');
  await shot((await page.$('#mailbox-address')) ? 'account' : 'refused');
}

// Waits for the test script to create FILE (up to 90 s).
async function waitForFile(file) {
  for (let i = 0; i < 900; i += 1) {
    if (fs.existsSync(file)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${file} did not appear`);
}

// Who the page at BASE shows as signed in (null: the sign-in page), and its HTTP status.
async function whoAt(base, label) {
  const response = await page.goto(base + '/');
  await shot(label);
  return { address: await text('#mailbox-address'), status: response ? response.status() : 0 };
}

// Roundcube's page: its message list (the text of every row), or the login page with the
// message it shows. Roundcube fills the list after the page loads, from a second request.
async function roundcubeView(label) {
  await page.waitForLoadState('load');
  const loggedIn = Boolean(await page.$('#messagelist'));
  if (loggedIn) {
    await page
      .waitForFunction(() => window.rcmail && !window.rcmail.busy && window.rcmail.message_list, null, {
        timeout: 20000,
      })
      .catch(() => {});
  }
  await shot(label);
  return {
    url: page.url(),
    loggedIn,
    loginButton: Boolean(await page.$('#rcmloginoauth')),
    messages: loggedIn ? await text('#messagelist tbody') : null,
    user: await text('.header-title.username, .username'),
    notice: await text('#messagestack'),
  };
}

async function roundcubeFolder(folder, label) {
  await page.goto(`${opt.base}/?_task=mail&_mbox=${encodeURIComponent(folder)}`);
  return roundcubeView(label);
}

// The webmail's OAuth sign-in, then (with --subject) one message sent through it.
async function roundcube() {
  // Roundcube's Elastic skin folds its mail view into one column below 768 pixels.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(opt.base + '/');
  await shot('rc-login');
  const seen = { loginPage: { button: await text('#rcmloginoauth') } };
  await page.click('#rcmloginoauth');
  await page.waitForSelector('input[name=login]');
  await shot('provider-login');
  await page.fill('input[name=login]', opt.login);
  await page.fill('input[name=password]', opt.password);
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
  for (let i = 0; i < 3 && !page.url().startsWith(opt.base); i += 1) {
    const consent = await page.$('button[type=submit]');
    if (!consent) break;
    await shot('provider-consent');
    await Promise.all([page.waitForLoadState('load'), consent.click()]);
  }
  await page.waitForURL((u) => u.toString().startsWith(opt.base), { timeout: 20000 });
  seen.inbox = await roundcubeView('rc-after-sign-in');
  if (!seen.inbox.loggedIn || !opt.subject) return seen;

  await page.goto(`${opt.base}/?_task=mail&_action=compose&_to=${encodeURIComponent(opt.to)}`);
  await page.waitForSelector('#compose-subject');
  await page.fill('#compose-subject', opt.subject);
  await page.fill('#composebody', `Sent from Roundcube, signed in by token.\n${opt.subject}\n`);
  await shot('rc-compose');
  await page.locator('button.send:visible').first().click();
  // Sent: Roundcube says so, then goes back to the list.
  seen.sendNotice = await page
    .waitForSelector('#messagestack .confirmation, #messagestack .error, #messagestack .warning', {
      timeout: 30000,
    })
    .then((el) => el.innerText())
    .catch(() => null);
  await page.waitForURL((u) => !u.toString().includes('_action=compose'), { timeout: 30000 }).catch(() => {});
  await shot('rc-sent');
  for (let i = 0; i < 15; i += 1) {
    seen.inboxAfterSend = await roundcubeFolder('INBOX', 'rc-inbox-after-send');
    if ((seen.inboxAfterSend.messages ?? '').includes(opt.subject)) break;
    await new Promise((r) => setTimeout(r, 2000));
  }
  seen.sentFolder = await roundcubeFolder('Sent', 'rc-sent-folder');
  return seen;
}

let result = {};
try {
  switch (action) {
    case 'signin': {
      let callback = null;
      page.on('request', (r) => {
        if (r.url().startsWith(opt.base + '/callback?')) callback = r.url();
      });
      await signIn();
      result = await report();
      if (opt.replay && callback) {
        await page.goto(callback);
        await shot('replayed-callback');
        result.replay = await report();
      }
      break;
    }

    case 'app-password': {
      await signIn();
      await page.fill('#name', opt.name);
      const wanted = opt.protocols.split(',');
      for (const p of ['imap', 'pop3', 'sieve', 'smtp']) {
        await page.setChecked(`input[name=${p}]`, wanted.includes(p));
      }
      await shot('new-app-password-form');
      await Promise.all([page.waitForLoadState('load'), page.click('text=Create app password')]);
      const secret = await text('#app-password');
      // Shown only by the page's one script, which the CSP allows by its hash.
      const copyButton = await page.isVisible('#copy-secret');
      await shot('app-password-created');
      const settings = await text('#client-settings');
      await page.click('text=Done');
      await page.waitForLoadState('load');
      await shot('app-password-list');
      result = await report({ secret, settings, copyButton, list: await text('#app-passwords') });
      break;
    }

    case 'revoke': {
      await signIn();
      const before = await text('#app-passwords');
      await shot('before-revoke');
      await Promise.all([
        page.waitForLoadState('load'),
        page.click(`button[aria-label="Revoke ${opt.name}"]`),
      ]);
      await shot('revoked');
      result = await report({ before, list: await text('#app-passwords') });
      break;
    }

    case 'signout': {
      await signIn();
      await Promise.all([page.waitForLoadState('load'), page.click('text=Sign out')]);
      // The provider asks whether to end its session too.
      if (!page.url().startsWith(opt.base)) {
        await shot('provider-logout');
        const yes = (await page.$('button[autofocus]')) ?? (await page.$('button[type=submit]'));
        if (yes) await Promise.all([page.waitForLoadState('load'), yes.click()]);
        await page.waitForURL((u) => u.toString().startsWith(opt.base), { timeout: 20000 });
      }
      await shot('signed-out');
      result = await report();
      break;
    }

    case 'local': {
      await page.goto(opt.base + '/');
      await page.fill('#address', opt.login);
      await page.fill('#password', opt.password);
      await shot('password-form');
      await Promise.all([page.waitForLoadState('load'), page.click('text=Sign in with password')]);
      await shot((await page.$('#mailbox-address')) ? 'local-account' : 'local-refused');
      result = await report();
      break;
    }

    case 'bad-input': {
      const seen = {};
      await page.goto(opt.base + '/callback?code=invented&state=forged');
      await shot('callback-without-sign-in');
      seen.noState = await report();
      // A provider error that answers no sign-in of this browser: none of its text shown.
      await page.goto(opt.base + '/callback?error=server_error&error_description=Call%20555-0100%20now');
      await shot('callback-forged-provider-error');
      seen.forgedProviderError = await report();
      // The answer to this browser's own sign-in (its state, the provider's iss): shown.
      const started = await context.request.get(opt.base + '/login', { maxRedirects: 0 });
      const state = new URL(started.headers()['location']).searchParams.get('state');
      await page.goto(
        opt.base + '/callback?error=access_denied&error_description=User%20cancelled' +
          `&state=${encodeURIComponent(state)}&iss=${encodeURIComponent(opt.issuer ?? '')}`,
      );
      await shot('callback-provider-error');
      seen.providerError = await report();
      await page.goto(opt.base + '/');
      const resp = await context.request.post(opt.base + '/login/password', {
        form: { address: 'nobody@example.org', password: 'x' },
        maxRedirects: 0,
      });
      seen.noCsrf = { status: resp.status(), body: (await resp.text()).includes('Form expired') };
      await page.goto(opt.base + '/no/such/page');
      await shot('not-found');
      seen.notFound = await report();
      result = seen;
      break;
    }

    case 'device': {
      await signIn();
      await Promise.all([page.waitForLoadState('load'), page.click('#set-up-device')]);
      await shot('device-form-empty');
      await page.check(`#kind-${opt.kind}`);
      const wanted = opt.protocols.split(',');
      for (const box of await page.$$('form[action="/devices"] input[type=checkbox]')) {
        await box.setChecked(wanted.includes(await box.getAttribute('name')));
      }
      await shot(`device-form-${opt.kind}`);
      await Promise.all([page.waitForLoadState('load'), page.click('form[action="/devices"] button[type=submit]')]);
      const secret = await text('#app-password');
      await shot(`device-ready-${opt.kind}`);
      const seen = {
        done: new URL(page.url()).pathname,
        secret,
        signature: await text('#profile-signature'),
        settings: await text('#client-settings'),
      };
      if (opt.kind === 'apple') {
        const link = await page.getAttribute('#profile-download', 'href');
        const [download] = await Promise.all([page.waitForEvent('download'), page.click('#profile-download')]);
        seen.profile = path.join(opt.out ?? os.tmpdir(), `${opt.prefix}.mobileconfig`);
        await download.saveAs(seen.profile);
        seen.filename = download.suggestedFilename();
        // The same session asks again: the link worked once.
        const again = await context.request.get(opt.base + link, { maxRedirects: 0 });
        seen.secondDownload = again.status();
        await page.goto(opt.base + link);
        await shot('profile-link-again');
        seen.secondDownloadReason = await text('#reason');
        await page.goto(opt.base + seen.done);
      }
      if (opt.kind === 'android') {
        const qr = await page.$('#qr-code');
        seen.qr = path.join(opt.shots, `${opt.prefix}-qr.png`);
        if (qr) await qr.screenshot({ path: seen.qr });
      }
      // Reloading the result page: never the secret again, never a second app password.
      await page.goto(opt.base + seen.done);
      await page.waitForLoadState('load');
      await shot(`device-reload-${opt.kind}`);
      seen.reloadShowsSecret = Boolean(secret) && (await page.content()).includes(secret);
      seen.reloadReason = await text('#reason');
      result = await report(seen);
      break;
    }

    case 'shared-session': {
      await signIn();
      const seen = { first: await whoAt(opt.base, 'a-signed-in') };
      seen.other = await whoAt(opt.other, 'b-same-session');
      fs.writeFileSync(`${opt.out}.ready`, '');
      await waitForFile(`${opt.out}.go`);
      seen.afterRestart = await whoAt(opt.base, 'a-after-restart');
      seen.otherAfterRestart = await whoAt(opt.other, 'b-after-restart');
      // Sign out at the provider itself: only its back-channel logout tells the daemons.
      const discovery = await (await fetch(`${opt.issuer}/.well-known/openid-configuration`)).json();
      const end = new URL(discovery.end_session_endpoint);
      end.searchParams.set('client_id', 'mailauthd');
      await page.goto(end.toString());
      await shot('provider-end-session');
      const yes = (await page.$('button[autofocus]')) ?? (await page.$('button[type=submit]'));
      if (yes) await Promise.all([page.waitForLoadState('load'), yes.click()]);
      await page.waitForLoadState('load');
      await shot('provider-signed-out');
      fs.writeFileSync(`${opt.out}.ended`, '');
      await waitForFile(`${opt.out}.checked`);
      seen.afterLogout = await whoAt(opt.base, 'a-after-logout');
      seen.otherAfterLogout = await whoAt(opt.other, 'b-after-logout');
      result = seen;
      break;
    }

    case 'hold': {
      // The page stays open while the test changes things elsewhere; the reload then
      // shows whether this browser's session outlived them.
      await signIn();
      const before = await report();
      const dir = opt.out ?? os.tmpdir();
      fs.writeFileSync(path.join(dir, 'hold-ready'), '');
      const release = path.join(dir, 'hold-release');
      for (let i = 0; i < 3000 && !fs.existsSync(release); i += 1) {
        await new Promise((r) => setTimeout(r, 100));
      }
      await page.goto(opt.base + '/');
      await page.waitForLoadState('load');
      await shot((await page.$('#mailbox-address')) ? 'still-signed-in' : 'signed-out');
      result = { before, after: await report(), released: fs.existsSync(release) };
      break;
    }

    case 'roundcube': {
      result = await roundcube();
      break;
    }

    default:
      throw new Error(`unknown action ${action}`);
  }
} catch (e) {
  try {
    await shot('error');
  } catch {
    // The page may be gone; the error below is what matters.
  }
  result = { error: String(e && e.message ? e.message : e), url: page.url() };
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
