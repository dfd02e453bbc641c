// The console's sign-in with OIDC in a real browser, through a real OpenID provider
// (oidc-provider, oidc-provider.mjs) on a loopback port: keyauth accepts its ID tokens as an
// [[issuer]] of the principals file whose audience is the console's client id, and names it
// with --console-oidc-issuer and --console-oidc-client-id.
//
//   - alice's ID token carries keyauth_roles (read, issue, revoke) and keyauth_applications
//     (app-alpha only): she sees app-alpha and not app-beta;
//   - bob's carries keys.read and keys.issue, no keys.revoke: no Revoke button anywhere, and
//     a RevokeKey he makes himself over gRPC-Web is refused PERMISSION_DENIED;
//   - carol's carries keys.verify only: every page says she cannot read it;
//   - a credential keyauth stops accepting: the console says the session expired and offers to
//     sign in again.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { keyauthBin, newPage, openBrowser, startKeyauth, verify } from "./harness.mjs";
import { CLIENT_ID, startProvider } from "./oidc-provider.mjs";

const adminToken = randomBytes(24).toString("hex");
const users = {
  alice: {
    password: randomBytes(12).toString("hex"),
    claims: {
      email: "alice@example.test",
      name: "Alice Operator",
      keyauth_roles: ["keys.read", "keys.issue", "keys.revoke"],
      keyauth_applications: ["app-alpha"],
    },
  },
  bob: {
    password: randomBytes(12).toString("hex"),
    claims: {
      email: "bob@example.test",
      name: "Bob Support",
      keyauth_roles: ["keys.read", "keys.issue"],
    },
  },
  carol: {
    password: randomBytes(12).toString("hex"),
    claims: {
      email: "carol@example.test",
      name: "Carol Gateway",
      keyauth_roles: ["keys.verify"],
    },
  },
};

let idp;
let keyauth;
let browser;
let problems;
let principalsDir;
const keys = {}; // application → { id, secret } issued with the admin token
const idTokens = [];

/** `keyauth keys issue` with the admin token: `{ id, secret }`. */
function issue(app, name) {
  const out = execFileSync(
    keyauthBin,
    ["keys", "issue", "--server", `http://${keyauth.grpcAddr}`, "--app", app, "--env", "test", "--name", name, "--json"],
    { env: { ...process.env, KEYAUTH_ADMIN_TOKEN: adminToken } },
  );
  const answer = JSON.parse(out.toString());
  return { id: answer.key.id, secret: answer.secret };
}

before(async () => {
  idp = await startProvider(users);
  keyauth = await startKeyauthWithIssuer();
  await idp.registerConsole(keyauth.origin);
  keys.alpha = issue("app-alpha", "Alpha worker");
  keys.beta = issue("app-beta", "Beta worker");
  ({ browser, problems } = await openBrowser(keyauth.origin));
});

async function startKeyauthWithIssuer() {
  principalsDir = mkdtempSync(join(tmpdir(), "keyauth-oidc-"));
  const principals = join(principalsDir, "principals.toml");
  writeFileSync(
    principals,
    [
      "[[issuer]]",
      `issuer = "${idp.issuer}"`,
      `audience = "${CLIENT_ID}"`,
      `jwks_url = "${idp.issuer}/jwks"`,
      'name_claim = "email"',
      'roles_claim = "keyauth_roles"',
      'applications_claim = "keyauth_applications"',
      "",
    ].join("\n"),
  );
  return startKeyauth({
    args: ["--principals", principals, "--console-oidc-issuer", idp.issuer, "--console-oidc-client-id", CLIENT_ID],
    env: { KEYAUTH_ADMIN_TOKEN: adminToken },
  });
}

after(async () => {
  await browser?.close();
  await keyauth?.stop();
  await idp?.stop();
  if (principalsDir) rmSync(principalsDir, { recursive: true, force: true });
});

/** Signs `user` in through the provider in a browser context of their own. */
async function signInAs(user) {
  const { page, shot } = await newPage(browser, keyauth.origin, problems);
  await page.goto(keyauth.origin);
  const host = new URL(idp.issuer).host;
  await page.getByRole("button", { name: `Sign in with ${host}` }).click();
  // The provider's pages.
  await page.getByRole("heading", { name: "Sign in to the test provider" }).waitFor();
  assert.equal(new URL(page.url()).origin, idp.issuer);
  await page.getByLabel("Username").fill(user);
  await page.getByLabel("Password").fill(users[user].password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Allow" }).click();
  // Back at the console, signed in.
  await page.locator("header .who-am-i").getByText(users[user].claims.email).waitFor();
  const stored = await page.evaluate(() => ({ ...sessionStorage }));
  idTokens.push(stored["keyauth.operator-token"]);
  return { page, shot, stored };
}

test("keyauth serves the console's OIDC settings, and its CSP lets the page reach the issuer only", async () => {
  const response = await fetch(`${keyauth.origin}/console/config.json`);
  assert.deepEqual(await response.json(), { oidc: { issuer: idp.issuer, client_id: CLIENT_ID } });
  const csp = response.headers.get("content-security-policy");
  assert.match(csp, new RegExp(`connect-src 'self' ${idp.issuer};`));
  assert.match(csp, /script-src 'self';/);
});

test("the sign-in page offers the provider beside the token form", async () => {
  const { page, shot } = await newPage(browser, keyauth.origin, problems);
  await page.goto(keyauth.origin);
  await page.getByRole("button", { name: `Sign in with ${new URL(idp.issuer).host}` }).waitFor();
  await page.getByLabel("Operator token").waitFor();
  await shot("20-sign-in-with-oidc");
  await page.context().close();
});

test("alice, scoped to app-alpha, signs in through the provider and sees only app-alpha", async () => {
  const { page, shot, stored } = await signInAs("alice");
  // The code and state are gone from the address; the verifier is gone from sessionStorage.
  assert.equal(page.url(), `${keyauth.origin}/`);
  assert.deepEqual(Object.keys(stored).sort(), ["keyauth.oidc-issuer", "keyauth.operator-token"]);
  assert.equal(stored["keyauth.oidc-issuer"], idp.issuer);
  assert.equal(stored["keyauth.operator-token"].split(".").length, 3, "the ID token");
  const who = await page.locator("header .who-am-i").innerText();
  assert.match(who, new RegExp(`Signed in as alice@example.test via ${new URL(idp.issuer).host}`));
  assert.match(who, /keys\.read, keys\.issue, keys\.revoke/);
  assert.match(who, /applications app-alpha/);

  const table = page.locator("table");
  await table.getByRole("link", { name: "app-alpha" }).waitFor();
  assert.doesNotMatch(await table.innerText(), /app-beta/);
  await shot("21-oidc-alice-applications");

  // Her keys page offers what her roles allow: create, roll and revoke.
  await table.getByRole("link", { name: "app-alpha" }).click();
  const row = page.locator(`tr[data-key-id="${keys.alpha.id}"]`);
  await row.waitFor();
  await row.getByRole("button", { name: /Revoke/ }).waitFor();
  await row.getByRole("button", { name: /Roll key/ }).waitFor();
  await page.getByRole("button", { name: "Create key" }).waitFor();

  // app-beta's key, asked for by its address: outside her scope.
  await page.goto(`${keyauth.origin}/#/keys/${keys.beta.id}`);
  await page.getByRole("alert").getByText(/Not allowed/).waitFor();
  await page.context().close();
});

test("bob, without keys.revoke, is offered no Revoke, and the API refuses his RevokeKey", async () => {
  const { page, shot } = await signInAs("bob");
  const who = await page.locator("header .who-am-i").innerText();
  assert.match(who, /Signed in as bob@example.test via /);
  const table = page.locator("table");
  await table.getByRole("link", { name: "app-beta" }).waitFor();
  await table.getByRole("link", { name: "app-alpha" }).waitFor(); // every application

  await table.getByRole("link", { name: "app-beta" }).click();
  const row = page.locator(`tr[data-key-id="${keys.beta.id}"]`);
  await row.getByRole("button", { name: /Roll key/ }).waitFor();
  assert.equal(await row.getByRole("button", { name: /Revoke/ }).count(), 0);

  await row.getByRole("link", { name: "Beta worker" }).click();
  await page.getByRole("heading", { name: "Permissions" }).waitFor();
  await page.getByRole("button", { name: "Roll key" }).waitFor();
  assert.equal(await page.getByRole("button", { name: /Revoke/ }).count(), 0);
  await shot("22-oidc-bob-key-without-revoke");

  // The call the button would have made, made by hand over gRPC-Web with his ID token.
  const refused = await page.evaluate(async (keyId) => {
    const id = new TextEncoder().encode(keyId);
    const message = new Uint8Array([0x0a, id.length, ...id]); // RevokeKeyRequest.key_id = 1
    const frame = new Uint8Array(5 + message.length);
    new DataView(frame.buffer).setUint32(1, message.length);
    frame.set(message, 5);
    const response = await fetch("/keyauth.v1.KeyAuthorityService/RevokeKey", {
      method: "POST",
      headers: {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        authorization: `Bearer ${sessionStorage.getItem("keyauth.operator-token")}`,
      },
      body: frame,
    });
    return { status: response.headers.get("grpc-status"), message: decodeURIComponent(response.headers.get("grpc-message") ?? "") };
  }, keys.beta.id);
  assert.equal(refused.status, "7", `PERMISSION_DENIED: ${JSON.stringify(refused)}`);
  assert.match(refused.message, /keys\.revoke/);
  const verdict = verify({ grpcAddr: keyauth.grpcAddr, token: adminToken }, keys.beta.secret);
  assert.equal(verdict.valid, true, `the key is not revoked: ${JSON.stringify(verdict)}`);

  // A credential keyauth stops accepting (as an ID token past its expiry): the console says
  // so and offers to sign in again.
  await page.evaluate(() => {
    const token = sessionStorage.getItem("keyauth.operator-token");
    sessionStorage.setItem("keyauth.operator-token", `${token.slice(0, -8)}AAAAAAAA`);
  });
  await page.reload();
  await page.getByText(/Your session has expired/).waitFor();
  await page.getByRole("button", { name: `Sign in with ${new URL(idp.issuer).host}` }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, "the refused token is forgotten");
  await shot("23-oidc-session-expired");
  await page.context().close();
});

test("carol, with keys.verify only, is told that she cannot read the pages", async () => {
  const { page, shot } = await signInAs("carol");
  await page.getByText(/You cannot read the applications and their keys/).waitFor();
  assert.equal(await page.getByRole("button", { name: "Create key" }).count(), 0);
  assert.equal(await page.locator("table").count(), 0);
  await page.getByRole("link", { name: "Audit trail" }).click();
  await page.getByText(/You cannot read the audit trail/).waitFor();
  await page.goto(`${keyauth.origin}/#/keys/${keys.alpha.id}`);
  await page.getByText(new RegExp(`You cannot read key ${keys.alpha.id}`)).waitFor();
  await shot("24-oidc-carol-cannot-read");
  await page.context().close();
});

test("no console error, no CSP violation, no ID token in keyauth's log", () => {
  assert.deepEqual(problems, []);
  assert.equal(idTokens.length, 3);
  for (const idToken of idTokens) assert.ok(!keyauth.log().includes(idToken));
  assert.ok(!keyauth.log().includes(adminToken));
});
