// The console's entry: how it may sign in (keyauth's console settings), the end of a sign-in with
// OIDC, the frame (who is signed in, navigation, sign-out) and the hash router that picks a
// page.

import { Code, ConnectError } from "@connectrpc/connect";
import { forgetToken, onCredentialRefused, setToken, token, tokenIssuer } from "./api";
import { h, replace } from "./dom";
import { errorBox } from "./errors";
import { finishSignIn, isCallback, loadConfig, type OidcConfig, oidcFailure, providerName } from "./oidc";
import { applicationsPage, auditPage, keyPage, keysPage, link } from "./pages";
import { forgetPrincipal, loadPrincipal, principal, whoAmI } from "./session";
import { signInPage } from "./signin";

const app = document.getElementById("app")!;
let oidc: OidcConfig | null = null;

function signIn(notice?: string): void {
  signInPage(app, { oidc, notice, signedIn: render });
}

function signOut(): void {
  forgetToken();
  forgetPrincipal();
  window.location.hash = link.applications();
  signIn();
}

/** keyauth refused the kept credential: say why in words the operator can act on. */
function credentialRefused(): void {
  const issuer = tokenIssuer();
  forgetToken();
  forgetPrincipal();
  const host = issuer === null ? null : new URL(issuer).host;
  signIn(
    host === null
      ? "keyauth no longer accepts the operator token you signed in with. Sign in again."
      : `Your session has expired: keyauth no longer accepts your sign-in with ${host}. Sign in again.`,
  );
}

/** The frame and the page the address names. */
function render(): void {
  if (token() === null) {
    signIn();
    return;
  }
  if (principal() === null) {
    // A page load with a kept credential: who is it? (A refusal calls credentialRefused.)
    loadPrincipal().then(render, (e: unknown) => {
      if (ConnectError.from(e).code === Code.Unauthenticated) return;
      const errors = errorBox();
      errors.show(e);
      replace(app, h("main", { id: "main" }, errors.element));
    });
    return;
  }
  const [path = "/", query = ""] = window.location.hash.replace(/^#/, "").split("?", 2);
  const params = new URLSearchParams(query);
  const segments = path.split("/").filter(Boolean).map(decodeURIComponent);
  const main = h("main", { id: "main", tabindex: -1 });
  const section = segments[0] === "audit" ? "audit" : "applications";
  const nav = h(
    "nav",
    { "aria-label": "Sections" },
    h("a", { href: link.applications(), "aria-current": section === "applications" ? "page" : undefined }, "Applications"),
    h("a", { href: link.audit(), "aria-current": section === "audit" ? "page" : undefined }, "Audit trail"),
  );
  replace(
    app,
    h("a", { href: "#main", class: "skip" }, "Skip to content"),
    h(
      "header",
      {},
      h("a", { href: link.applications(), class: "brand" }, "keyauth"),
      nav,
      whoAmI(),
      h("button", { type: "button", class: "sign-out", onclick: signOut }, "Sign out"),
    ),
    main,
  );
  const page =
    segments[0] === "apps" && segments[1]
      ? keysPage(main, segments[1], params)
      : segments[0] === "keys" && segments[1]
        ? keyPage(main, segments[1])
        : segments[0] === "audit"
          ? auditPage(main, params)
          : applicationsPage(main);
  page.catch((e: unknown) => {
    const errors = errorBox();
    errors.show(e);
    main.append(errors.element);
  });
}

/** The provider sent the browser back: exchange the code, then ask keyauth who that is. */
async function completeSignIn(config: OidcConfig): Promise<void> {
  let idToken: string;
  try {
    idToken = await finishSignIn(config);
  } catch (e) {
    signIn(oidcFailure(config, e));
    return;
  }
  try {
    await loadPrincipal(idToken);
  } catch (e) {
    const error = ConnectError.from(e);
    const hint =
      error.code === Code.Unauthenticated
        ? ` The principals file's [[issuer]] "${config.issuer}" must have audience = "${config.client_id}".`
        : "";
    signIn(`keyauth refused the ID token from ${providerName(config)}: ${error.rawMessage}.${hint}`);
    return;
  }
  setToken(idToken, config.issuer);
  render();
}

async function start(): Promise<void> {
  onCredentialRefused(credentialRefused);
  window.addEventListener("hashchange", render);
  try {
    oidc = await loadConfig();
  } catch (e) {
    // Token sign-in still works without the settings.
    console.warn(`keyauth console: no sign-in settings: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (isCallback()) {
    if (oidc === null) {
      history.replaceState(null, "", `${window.location.pathname}${window.location.hash}`);
      signIn("keyauth offers no sign-in with OIDC: sign in with a token.");
      return;
    }
    await completeSignIn(oidc);
    return;
  }
  render();
}

void start();
