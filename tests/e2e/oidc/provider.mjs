// A real, standards-compliant OpenID provider for the end-to-end test: the npm package
// oidc-provider on a loopback port, with the `mailcow_template` claim released by the
// `mailcow_template` scope from UserInfo (as mailcow's setups do), and a `department` claim
// released by the `department` scope, for a config that maps templates from another claim.
//
// Accounts live in a JSON file that is read on every sign-in, so the test script can change
// a person's claims between runs: { "alice": { "email": "...", "mailcow_template": "staff" } }
//
// Refresh tokens are issued to the client on every sign-in (the liveness check uses them),
// and Back-Channel Logout is on: with --backchannel-logout URL, ending a session at the
// provider POSTs a logout token there.
//
// Usage: node provider.mjs --port N --accounts FILE --redirect URL --post-logout URL
//                          [--tls-cert FILE --tls-key FILE] [--client-secret S]
//                          [--backchannel-logout URL]
//                          [--store-size N] [--accounts-cache]
//                          [--webmail-client ID [--webmail-secret S]]... [--webmail-redirect URL]...
//                          [--webmail-auth-method client_secret_post|client_secret_basic]
//                          [--resource URL]... [--other-resource URL]... [--resource-scope S]
//                          [--access-token-ttl SECONDS]
//
// Webmail clients (a webmail such as Roundcube signs its users in here and hands their
// access tokens to IMAP and SMTP): each --webmail-client gets the --webmail-secret of the
// same position (or a fixed test secret) and every --webmail-redirect; they authenticate
// at the token, introspection and revocation endpoints with --webmail-auth-method
// (default client_secret_post, as Roundcube does), and PKCE is optional for them.
//
// Access tokens: a token request without a resource indicator gets an opaque token (for
// UserInfo, and what a server learns about it through introspection, RFC 7662). A token
// requested for a --resource URL (`resource=` in the authorization and token requests,
// RFC 8707) is a signed JWT (RFC 9068) whose `aud` is the requesting client's id; for an
// --other-resource URL, `aud` is that URL (a token meant for some other service). Such
// tokens carry the granted scopes that --resource-scope lists (default "email profile").
// Introspection is open to every client with a secret (mailauthd's client among them),
// for any client's opaque tokens; revocation to the client a token was issued to.
//
// For many people at once (bench/liveness.sh): --store-size N holds up to N entries in
// memory (grants, tokens, sessions; the package keeps 1,000 by default and forgets the
// oldest, so its 1,001st token would be lost), and --accounts-cache reads the accounts
// file again only when it changed, not on every request.

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    accounts: { type: 'string' },
    redirect: { type: 'string' },
    'post-logout': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'client-secret': { type: 'string', default: 'e2e-client-secret-0123456789abcdef' },
    'backchannel-logout': { type: 'string' },
    'store-size': { type: 'string' },
    'accounts-cache': { type: 'boolean', default: false },
    'webmail-client': { type: 'string', multiple: true, default: [] },
    'webmail-secret': { type: 'string', multiple: true, default: [] },
    'webmail-redirect': { type: 'string', multiple: true, default: [] },
    'webmail-auth-method': { type: 'string', default: 'client_secret_post' },
    resource: { type: 'string', multiple: true, default: [] },
    'other-resource': { type: 'string', multiple: true, default: [] },
    'resource-scope': { type: 'string', default: 'email profile' },
    'access-token-ttl': { type: 'string' },
  },
});

const webmailIds = new Set(args['webmail-client']);
const webmailClients = args['webmail-client'].map((id, i) => ({
  client_id: id,
  client_secret: args['webmail-secret'][i] ?? 'e2e-webmail-secret-0123456789abcdef',
  redirect_uris: args['webmail-redirect'],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: args['webmail-auth-method'],
}));
if (webmailClients.length > 0 && args['webmail-redirect'].length === 0) {
  throw new Error('--webmail-client needs at least one --webmail-redirect');
}
const ownAudience = new Set(args.resource);
const otherAudience = new Set(args['other-resource']);
const accessTokenTtl = args['access-token-ttl'] ? Number(args['access-token-ttl']) : 3600;

const tls = Boolean(args['tls-cert']);
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${args.port}`;

function readAccounts() {
  if (args['accounts-cache']) return cachedAccounts();
  return JSON.parse(fs.readFileSync(args.accounts, 'utf8'));
}

let accountsCache = { key: '', accounts: {} };
function cachedAccounts() {
  const st = fs.statSync(args.accounts);
  const key = `${st.mtimeMs}:${st.size}:${st.ino}`;
  if (key !== accountsCache.key) {
    accountsCache = { key, accounts: JSON.parse(fs.readFileSync(args.accounts, 'utf8')) };
  }
  return accountsCache.accounts;
}

const configuration = {
  clients: [
    {
      client_id: 'mailauthd',
      client_secret: args['client-secret'],
      redirect_uris: [args.redirect],
      post_logout_redirect_uris: [args['post-logout']],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...(args['backchannel-logout']
        ? {
            backchannel_logout_uri: args['backchannel-logout'],
            backchannel_logout_session_required: true,
          }
        : {}),
    },
    ...webmailClients,
  ],
  scopes: ['openid', 'offline_access', 'profile', 'email', 'mailcow_template', 'department'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    mailcow_template: ['mailcow_template'],
    department: ['department'],
  },
  // ID tokens carry only what the spec puts there when an access token is issued; the rest,
  // mailcow_template included, comes from UserInfo, so the relying party must merge.
  conformIdTokenClaims: true,
  // Webmail clients may leave PKCE out (not every webmail sends it); mailauthd never does.
  pkce: { required: (_ctx, client) => !webmailIds.has(client.clientId) },
  ttl: { AccessToken: () => accessTokenTtl },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    introspection: {
      enabled: true,
      // Any client that authenticates with a secret may ask about any token: mail
      // servers (mailauthd) check the tokens a webmail client was given.
      allowedPolicy: (_ctx, client) => client.clientAuthMethod !== 'none',
    },
    revocation: {
      enabled: true,
      allowedPolicy: (_ctx, client, token) => token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: () => false,
      getResourceServerInfo(_ctx, resource, client) {
        if (!ownAudience.has(resource) && !otherAudience.has(resource)) {
          throw new errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          scope: args['resource-scope'],
          audience: ownAudience.has(resource) ? client.clientId : resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: accessTokenTtl,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // A refresh token for every sign-in of a client allowed the grant, whether or not the
  // consent prompt ran (by default offline_access needs prompt=consent).
  issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  cookies: { keys: ['mailauthd-e2e-cookie-key-not-secret'] },
  // Test-only: the back-channel logout goes to the daemon on loopback, which the provider's
  // protection against requests to special-use addresses would refuse.
  fetch(url, options) {
    const { dispatcher: _ssrfGuard, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  async findAccount(_ctx, id) {
    const account = readAccounts()[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, ...account };
      },
    };
  },
};

if (args['store-size']) {
  // The package's own in-memory adapter, over a store of the size asked for.
  const store = new LRU({ maxSize: Number(args['store-size']) });
  configuration.adapter = (model) => new MemoryAdapter(model, store);
}

const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, err) => console.error('provider server_error', err));
provider.on('backchannel.success', (_ctx, client, accountId, sid) =>
  console.log(`backchannel logout sent to ${client.clientId} for ${accountId} sid ${sid}`),
);
provider.on('backchannel.error', (_ctx, err, client, accountId, sid) =>
  console.error(`backchannel logout to ${client.clientId} for ${accountId} sid ${sid} failed:`, err),
);

const server = tls
  ? https.createServer(
      { cert: fs.readFileSync(args['tls-cert']), key: fs.readFileSync(args['tls-key']) },
      provider.callback(),
    )
  : http.createServer(provider.callback());

server.listen(Number(args.port), '127.0.0.1', () => {
  console.log(`provider listening at ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
