// The console in a real browser: Debian's Chromium driven by playwright-core, against the real
// keyauth binary (SQLite in a temp dir, the HTTP listener on port 0). What an operator does:
// a wrong token refused, sign in, create a restricted key and see its secret once, find it,
// roll it with a 1 h grace and see both keys, revoke the old one, read the timeline, tighten
// permissions, read the audit trail. Screenshots of each page go to test-results/ (ignored).
// The sign-in with OIDC is oidc.test.mjs; what both share is harness.mjs.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { openBrowser, shots, startKeyauth, verify as verifyAt } from "./harness.mjs";

const token = randomBytes(24).toString("hex");

let keyauth;
let origin;
let browser;
let page;
let problems;
let shot;

const verify = (key, ...permissions) => verifyAt(keyauth, key, ...permissions);

/** The row of the keys table of key `keyId`. */
function rowOf(keyId) {
  return page.locator(`tr[data-key-id="${keyId}"]`);
}

before(async () => {
  keyauth = await startKeyauth({
    // Refused sign-ins reach the audit trail within half a second.
    args: ["--usage-flush-interval", "500ms"],
    env: { KEYAUTH_ADMIN_TOKEN: token },
  });
  origin = keyauth.origin;
  ({ browser, page, problems, shot } = await openBrowser(origin));
});

after(async () => {
  await browser?.close();
  await keyauth?.stop();
});

let first; // { id, secret } of the key created
let second; // { id, secret } of the key that replaced it

test("a wrong operator token is refused with a clear message and a request id", async () => {
  await page.goto(origin);
  await page.getByLabel("Operator token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  const alert = page.getByRole("alert");
  await alert.waitFor();
  const text = await alert.innerText();
  assert.match(text, /keyauth refused the operator token: the operator token is not valid/);
  assert.match(text, /Request id: \S+/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, "a refused token is not kept");
  await shot("01-sign-in-refused");
});

test("the operator signs in; the token is kept in sessionStorage only", async () => {
  await page.getByLabel("Operator token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Applications" }).waitFor();
  // The header says who is signed in: the admin token is the principal "admin", role admin.
  const who = await page.locator("header .who-am-i").innerText();
  assert.match(who, /Signed in as admin · admin/);
  assert.doesNotMatch(who, / via /, "no issuer for a token");
  const stored = await page.evaluate(() => ({
    session: Object.values(sessionStorage),
    local: localStorage.length,
    cookie: document.cookie,
    url: location.href,
  }));
  assert.deepEqual(stored.session, [token]);
  assert.equal(stored.local, 0);
  assert.equal(stored.cookie, "");
  assert.ok(!stored.url.includes(token));
  await page.getByText("No application has keys yet").waitFor();
  await shot("02-applications-empty");
});

test("create a restricted key: the catalog grid, the secret shown once", async () => {
  await page.getByRole("button", { name: "Create key" }).click();
  const dialog = page.getByRole("dialog", { name: "Create key" });
  await dialog.getByLabel("Application").fill("billing-service");
  await dialog.getByLabel("Name").fill("Read-only patients");
  await dialog.getByLabel("Restricted: only the permissions ticked below").check();
  await dialog.getByLabel("patients: read").check();
  await dialog.getByLabel("encounters: read").check();
  await shot("03-create-key");
  await dialog.getByRole("button", { name: "Create key" }).click();
  await shot("03b-create-key-submitted");

  const secretDialog = page.getByRole("dialog", { name: "Your new key" });
  const secret = await secretDialog.getByLabel("The new API key").inputValue();
  assert.match(secret, /^sk_test_/);
  await secretDialog.getByText("Never commit it to version control").waitFor();
  await secretDialog.getByRole("button", { name: "Copy key" }).click();
  await secretDialog.getByText("Copied.").waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  await shot("04-secret-once");
  await secretDialog.getByRole("button", { name: /close/ }).click();

  // Gone from the page once the dialog is closed.
  await page.getByRole("heading", { name: "API keys of billing-service" }).waitFor();
  assert.ok(!(await page.content()).includes(secret), "the secret stays in the page");
  const verdict = verify(secret);
  assert.equal(verdict.valid, true, JSON.stringify(verdict));
  first = { id: verdict.key.id, secret };
});

test("the key is in the list: active, restricted, test data", async () => {
  const row = rowOf(first.id);
  await row.waitFor();
  assert.match(await row.innerText(), /Read-only patients[\s\S]*Active[\s\S]*Restricted/);
  assert.equal(await page.getByRole("link", { name: "Test data" }).getAttribute("aria-current"), "page");
  await page.getByRole("link", { name: "Live data" }).click();
  await page.getByText("0 keys shown").waitFor();
  await page.getByRole("link", { name: "Test data" }).click();
  await rowOf(first.id).waitFor();
  await shot("05-keys");
});

test("roll it with a 1 h grace: both keys listed, both work", async () => {
  await rowOf(first.id).getByRole("button", { name: /Roll key/ }).click();
  const dialog = page.getByRole("dialog", { name: /Roll key/ });
  await dialog.getByLabel("1 hour").check();
  assert.match(await dialog.locator(".consequence").innerText(), /keeps working until about/);
  await dialog.getByLabel("Now").check();
  assert.match(await dialog.locator(".consequence").innerText(), /stops working now/);
  await dialog.getByLabel("1 hour").check();
  await shot("06-roll-key");
  await dialog.getByRole("button", { name: "Roll key" }).click();

  const secretDialog = page.getByRole("dialog", { name: "The new key" });
  const secret = await secretDialog.getByLabel("The new API key").inputValue();
  await secretDialog.getByRole("button", { name: /close/ }).click();
  const verdict = verify(secret);
  assert.equal(verdict.valid, true);
  second = { id: verdict.key.id, secret };

  await rowOf(second.id).waitFor();
  assert.match(await rowOf(second.id).innerText(), /Active/);
  assert.match(await rowOf(first.id).innerText(), /Expiring \(grace period\)/);
  assert.equal(verify(first.secret).valid, true, "the old key works during its grace period");
  await shot("07-keys-after-roll");
});

test("revoke the old key with a reason and a confirmation", async () => {
  await rowOf(first.id).getByRole("button", { name: /Revoke/ }).click();
  const dialog = page.getByRole("dialog", { name: /Revoke key/ });
  await dialog.getByLabel("Reason").fill("rotated after the roll");
  const submit = dialog.getByRole("button", { name: "Revoke key" });
  await submit.click(); // not confirmed: the form does not submit
  assert.ok(await dialog.isVisible());
  await dialog.getByLabel(/stops working now/).check();
  await submit.click();
  await page.waitForFunction(
    (id) => document.querySelector(`tr[data-key-id="${id}"]`)?.textContent?.includes("Revoked"),
    first.id,
  );
  assert.equal(verify(first.secret).valid, false);
  assert.equal(verify(first.secret).error.code, "api_key_revoked");

  // The state filter: only the revoked key, then only the active one.
  await page.getByLabel("State").selectOption({ label: "Revoked" });
  await page.getByText("1 key shown.").waitFor();
  assert.equal(await rowOf(second.id).count(), 0);
  await page.getByLabel("State").selectOption({ label: "Active" });
  await rowOf(second.id).waitFor();
  assert.equal(await rowOf(first.id).count(), 0);
  await page.getByLabel("State").selectOption({ label: "All states" });
  await rowOf(first.id).waitFor();
});

test("the old key's page: its facts and its timeline", async () => {
  await rowOf(first.id).getByRole("link", { name: "Read-only patients" }).click();
  await page.getByRole("heading", { name: "Audit trail" }).waitFor();
  const timeline = page.locator("ol.timeline");
  await timeline.locator("li").nth(2).waitFor();
  const text = await timeline.innerText();
  for (const event of ["Issued", "Rolled", "Revoked"]) assert.match(text, new RegExp(event));
  assert.match(await page.locator("dl.facts").innerText(), /rotated after the roll/);
  await shot("08-key-detail-revoked");
});

test("the new key's permissions are edited through UpdateKey", async () => {
  await page.goto(`${origin}/#/keys/${second.id}`);
  await page.getByRole("heading", { name: "Permissions" }).waitFor();
  assert.ok(await page.getByLabel("patients: read").isChecked());
  await page.getByLabel("encounters: read").uncheck();
  await page.getByLabel("observations: read").check();
  await page.getByRole("button", { name: "Save permissions" }).click();
  await page.getByText("Saved: observations: read · patients: read").waitFor();
  await page.locator("ol.timeline").getByText("Updated").waitFor();
  await shot("09-key-detail-permissions");
  assert.equal(verify(second.secret, "observations:read").valid, true);
  const refused = verify(second.secret, "encounters:read");
  assert.equal(refused.valid, false);
  assert.equal(refused.error.code, "insufficient_permissions");
});

test("the audit trail: every event, and the type filter", async () => {
  await page.getByRole("link", { name: "Audit trail" }).click();
  await page.getByRole("heading", { name: "Audit trail" }).waitFor();
  const table = page.locator("table.audit");
  await table.getByText("Revoked").first().waitFor();
  const all = await table.innerText();
  for (const event of ["Issued", "Rolled", "Revoked", "Updated"]) assert.match(all, new RegExp(event));
  await shot("10-audit");
  // The refused sign-in of the first test, written in aggregate by the background task.
  await page.getByLabel("Type").selectOption({ label: "Operator authentication failed" });
  await table.getByText("Operator authentication failed").first().waitFor({ timeout: 10_000 });
  assert.doesNotMatch(await table.locator("tbody").innerText(), /Issued|Rolled/);
  await shot("11-audit-auth-failures");
});

test("no console error, no CSP violation, no secret in the server's log", () => {
  assert.deepEqual(problems, []);
  const serverLog = keyauth.log();
  assert.ok(!serverLog.includes(first.secret) && !serverLog.includes(second.secret));
  assert.ok(!serverLog.includes(token));
  assert.ok(readFileSync(join(shots, "05-keys.png")).length > 1000);
});
