// What the browser tests share: the real keyauth binary started on port 0 (SQLite in a temp dir),
// Debian's Chromium through playwright-core with every console error, page error, HTTP error and
// CSP violation collected, and screenshots into test-results/.
//
//   KEYAUTH_BIN   the keyauth binary (default: ../target/debug/keyauth)
//   CHROMIUM      the browser (default: /usr/bin/chromium)

import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const keyauthBin = resolve(here, "..", process.env.KEYAUTH_BIN ?? "../target/debug/keyauth");
export const shots = resolve(here, "..", "test-results");
mkdirSync(shots, { recursive: true });

/**
 * Starts `keyauth serve` with `args` and `env` added; resolves once it logs its addresses:
 * `{ origin, grpcAddr, work, log(), stop() }`.
 */
export function startKeyauth({ args = [], env = {} } = {}) {
  const work = mkdtempSync(join(tmpdir(), "keyauth-console-"));
  let log = "";
  const server = spawn(
    keyauthBin,
    [
      "serve",
      "--listen", "127.0.0.1:0",
      "--http-listen", "127.0.0.1:0",
      "--database", `sqlite://${join(work, "keyauth.db")}`,
      ...args,
    ],
    { env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1", ...env } },
  );
  return new Promise((resolveStart, reject) => {
    let started = null;
    const timer = setTimeout(() => reject(new Error(`keyauth did not start:\n${log}`)), 30_000);
    server.stderr.on("data", (chunk) => {
      log += chunk;
      const serving = /keyauth serving addr=(\S+) http_addr=(\S+)/.exec(log);
      if (serving && !started) {
        clearTimeout(timer);
        started = {
          grpcAddr: serving[1],
          origin: `http://${serving[2]}`,
          work,
          log: () => log,
          async stop() {
            if (server.exitCode === null) {
              server.kill("SIGTERM");
              await new Promise((r) => server.on("exit", r));
            }
            rmSync(work, { recursive: true, force: true });
          },
        };
        resolveStart(started);
      }
    });
    server.on("exit", (code) => {
      if (!started) {
        clearTimeout(timer);
        reject(new Error(`keyauth exited with ${code}:\n${log}`));
      }
    });
  });
}

/**
 * `keyauth verify` from the command line: the gRPC port's verdict on a key. `token`: the
 * caller's credential, needed once a credential with keys.verify is configured.
 */
export function verify({ grpcAddr, token }, key, ...permissions) {
  const args = ["verify", "--server", `http://${grpcAddr}`, "--json", "-"];
  for (const p of permissions) args.push("--permission", p);
  const env = token === undefined ? process.env : { ...process.env, KEYAUTH_TOKEN: token };
  let out;
  try {
    out = execFileSync(keyauthBin, args, { input: `${key}\n`, env });
  } catch (e) {
    out = e.stdout; // an invalid key exits non-zero, with its verdict on stdout
  }
  return JSON.parse(out.toString());
}

/** Chromium with one page; `problems` collects what must not happen. */
export async function openBrowser(origin) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  const problems = [];
  return { browser, problems, ...(await newPage(browser, origin, problems)) };
}

/**
 * A page in a context of its own (its own cookies and sessionStorage: another person at
 * another browser), its problems added to `problems`.
 */
export async function newPage(browser, origin, problems) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
  const page = await context.newPage();
  page.on("console", (message) => {
    // A refused call is an HTTP 200 gRPC-Web answer: the browser logs nothing for it.
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.url()}`);
  });
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  return {
    page,
    shot: (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true }),
  };
}
