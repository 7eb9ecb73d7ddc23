// A real OpenID provider (oidc-provider) on loopback for Meterline's end-to-end tests.
//
//   node server.mjs --port 8123 --config provider.json
//
// It issues RS256 JWT access tokens through the client credentials grant, shaped like Microsoft Entra ID
// app-only access tokens: iss, aud, iat, nbf, exp, sub, tid, roles (left out when empty), azp (v2) or
// appid (v1), oid, idtyp "app", ver, jti, and the signing key's kid in the header. See README.md for the config file.
//
// Prints `READY <issuer>` on stdout once listening. On SIGHUP it reads the config file again and serves a
// provider built from it on the same port (key rotation), then prints `RELOADED <signing kid>`. Exits 0 on
// SIGTERM or SIGINT.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    config: { type: 'string' },
  },
  strict: true,
});

function fail(message) {
  process.stderr.write(`oidc test provider: ${message}\n`);
  process.exit(2);
}

const port = Number.parseInt(args.port ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('--port must be a port number (1-65535)');
if (!args.config) fail('--config PATH is required');

const issuer = `http://127.0.0.1:${port}`;

// The config file, checked; at start a bad one exits 2, on reload too (the tests read stderr).
function load() {
  const config = JSON.parse(readFileSync(args.config, 'utf8'));
  const { keys, audience, clients } = config;
  const ttl = config.accessTokenTtlSeconds ?? 600;
  if (!Array.isArray(keys) || keys.length === 0) fail('config.keys must be a non-empty array of private RSA JWKs');
  for (const key of keys) {
    if (key.kty !== 'RSA' || !key.d || !key.kid) fail('every key must be a private RSA JWK with a kid');
  }
  if (typeof audience !== 'string' || audience === '') fail('config.audience must be a non-empty string');
  if (!Array.isArray(clients) || clients.length === 0) fail('config.clients must be a non-empty array');
  if (!Number.isInteger(ttl) || ttl <= 0) fail('config.accessTokenTtlSeconds must be a positive integer');
  return { keys, audience, clients, ttl };
}

// A stable, GUID-shaped object id for a client that has none (the Rust side derives the same value).
function derivedOid(clientId) {
  const hex = createHash('sha256').update(`meterline-test-oid:${clientId}`).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

// A provider for one config: its keys (the first signs), audience, clients and token lifetime.
function build({ keys, audience, clients, ttl }) {
  const signingKid = keys[0].kid;
  const clientsById = new Map(clients.map((client) => [client.client_id, client]));
  const provider = new Provider(issuer, {
    clients: clients.map((client) => ({
      client_id: client.client_id,
      client_secret: client.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
    })),
    // Private keys; the provider publishes their public halves at /jwks, in this order.
    jwks: { keys: keys.map((key) => ({ ...key, alg: 'RS256', use: 'sig' })) },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => audience,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator, client) => {
          if (resourceIndicator !== audience) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}; this provider serves ${audience}`);
          }
          const roles = clientsById.get(client.clientId)?.roles ?? [];
          return {
            scope: roles.length > 0 ? roles.join(' ') : 'api',
            audience,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256', kid: signingKid } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? ttl,
    },
    // Entra's claims for an app-only token; the provider's own claims (iss, aud, exp, ...) win on conflict.
    extraTokenClaims: async (_ctx, token) => {
      const client = clientsById.get(token.clientId);
      if (!client) return undefined;
      const v1 = client.appid_claim === 'appid';
      return {
        tid: client.tid,
        // Entra leaves roles out when the app holds no app role.
        ...(client.roles?.length ? { roles: client.roles } : {}),
        oid: client.oid ?? derivedOid(client.client_id),
        idtyp: 'app',
        ver: v1 ? '1.0' : '2.0',
        // A multi-tenant application is one app id with a service principal in each directory: configured as one
        // client per directory, each issuing its own tid and the shared app_id.
        ...(v1 ? { appid: client.app_id ?? client.client_id } : { azp: client.app_id ?? client.client_id }),
      };
    },
    formats: {
      customizers: {
        // Entra's header says typ "JWT" (oidc-provider's default is RFC 9068's "at+jwt"); Entra carries nbf
        // and no RFC 9068 client_id claim (the app id is in azp or appid).
        jwt: async (_ctx, _token, jwt) => {
          jwt.header = { typ: 'JWT' };
          jwt.payload.nbf = jwt.payload.iat;
          delete jwt.payload.client_id;
        },
      },
    },
  });

  provider.on('server_error', (_ctx, error) => {
    process.stderr.write(`oidc test provider: server_error: ${error?.stack ?? error}\n`);
  });
  return { handle: provider.callback(), signingKid };
}

let current = build(load());
const server = createServer((req, res) => current.handle(req, res));
server.on('error', (error) => fail(`cannot listen on 127.0.0.1:${port}: ${error.message}`));
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

process.on('SIGHUP', () => {
  current = build(load());
  process.stdout.write(`RELOADED ${current.signingKid}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
