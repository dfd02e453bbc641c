// A real OpenID provider for the console's browser test: panva's oidc-provider (certified), on a
// loopback port, with
//   - users whose ID tokens carry keyauth's claims (`keyauth_roles`, `keyauth_applications`)
//     beside `email` and `name`: the claims are mapped to the `openid` scope, and
//     `conformIdTokenClaims: false` puts them in the ID token of the code flow (by default they
//     would be in the userinfo answer only);
//   - its own login and consent pages (a username and password form, checked; an "Allow"
//     button), which the browser test fills in as an operator would;
//   - the console registered as a public client (no secret, PKCE required) through the
//     provider's dynamic client registration, once keyauth's console origin is known: keyauth
//     must know the issuer when it starts, and the client's redirect URI is keyauth's origin +
//     "/", known only after it started on port 0.
//
//   const idp = await startProvider({ alice: { password, claims: { … } } });
//   …start keyauth with --console-oidc-issuer idp.issuer …
//   await idp.registerConsole(origin);   // client id: CLIENT_ID
//   await idp.stop();

import { generateKeyPairSync, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import Provider from "oidc-provider";

/** The console's client id at the provider. */
export const CLIENT_ID = "keyauth-console";

/** The claims keyauth reads, in every ID token (scope `openid`). */
const KEYAUTH_CLAIMS = ["keyauth_roles", "keyauth_applications", "keyauth_environments"];

const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head>` +
    `<body><main><h1>${escape(title)}</h1>${body}</main></body></html>`;
}

function loginForm(uid, error) {
  return page(
    "Sign in to the test provider",
    (error ? `<p role="alert">${escape(error)}</p>` : "") +
      `<form method="post" action="/interaction/${escape(uid)}/login">` +
      `<p><label for="username">Username</label> <input id="username" name="username" autocomplete="off" required></p>` +
      `<p><label for="password">Password</label> <input id="password" name="password" type="password" required></p>` +
      `<p><button type="submit">Sign in</button></p></form>`,
  );
}

function consentForm(uid, clientId, scopes) {
  return page(
    "Allow access",
    `<p>${escape(clientId)} asks for: ${escape(scopes.join(" "))}</p>` +
      `<form method="post" action="/interaction/${escape(uid)}/consent"><button type="submit">Allow</button></form>`,
  );
}

async function formBody(req) {
  let text = "";
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 10_000) throw new Error("form too large");
  }
  return new URLSearchParams(text);
}

/**
 * Starts the provider on 127.0.0.1, port 0. `users` maps a username to its password and the
 * claims of its ID token (besides `sub`, which is the username).
 */
export async function startProvider(users) {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: "jwk" }), kid: "test-signing-key", alg: "RS256", use: "sig" };

  const provider = new Provider(issuer, {
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString("hex")] },
    claims: {
      openid: ["sub", ...KEYAUTH_CLAIMS],
      profile: ["name"],
      email: ["email", "email_verified"],
    },
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true, idFactory: () => CLIENT_ID },
    },
    pkce: { required: () => true },
    clientBasedCORS: (ctx, origin, client) => client.redirectUris.some((uri) => new URL(uri).origin === origin),
    findAccount: (ctx, sub) =>
      Object.hasOwn(users, sub)
        ? { accountId: sub, claims: () => ({ sub, email_verified: true, ...users[sub].claims }) }
        : undefined,
  });
  const callback = provider.callback();

  /** The login and consent pages: /interaction/<uid>, then POST …/login or …/consent. */
  async function interaction(req, res, uid, step) {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) throw new Error("interaction mismatch");
    const html = (status, body) => {
      res.writeHead(status, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(body);
    };
    if (req.method === "GET") {
      if (details.prompt.name === "login") return html(200, loginForm(uid));
      return html(200, consentForm(uid, details.params.client_id, String(details.params.scope).split(" ")));
    }
    if (step === "login") {
      const form = await formBody(req);
      const username = form.get("username") ?? "";
      const user = Object.hasOwn(users, username) ? users[username] : null;
      if (user === null || user.password !== form.get("password")) {
        return html(200, loginForm(uid, "Unknown username or wrong password."));
      }
      return provider.interactionFinished(req, res, { login: { accountId: username } }, { mergeWithLastSubmission: false });
    }
    // consent: grant what the prompt says is missing
    const { prompt, params, session, grantId } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(" "));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }

  server.on("request", (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    if (path === "/favicon.ico") return res.writeHead(204).end();
    const match = /^\/interaction\/([\w-]+)(?:\/(login|consent))?$/.exec(path);
    if (!match) return callback(req, res);
    interaction(req, res, match[1], match[2]).catch((e) => {
      res.writeHead(500, { "content-type": "text/plain" });
      res.end(`interaction failed: ${e.message}`);
    });
  });

  return {
    issuer,
    /** Registers the console (RFC 7591) with its redirect URI: `origin` + "/". */
    async registerConsole(origin) {
      const response = await fetch(`${issuer}/reg`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          client_name: "keyauth console",
          application_type: "web",
          redirect_uris: [`${origin}/`],
          token_endpoint_auth_method: "none",
          grant_types: ["authorization_code"],
          response_types: ["code"],
          id_token_signed_response_alg: "RS256",
        }),
      });
      const body = await response.json();
      if (response.status !== 201 || body.client_id !== CLIENT_ID) {
        throw new Error(`the console's registration failed: ${response.status} ${JSON.stringify(body)}`);
      }
    },
    stop() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
