// Sign-in with OIDC: the authorization code flow with PKCE (S256), state and nonce, all of it
// oauth4webapi's (discovery, the code exchange, the ID token's claims). keyauth says which
// provider (`/console/config.json`, from --console-oidc-issuer and --console-oidc-client-id);
// the redirect URI is this origin + "/" (the console routes by the hash, so the query is free).
// The verifier, state and nonce wait in sessionStorage while the browser is at the provider,
// and are removed when it comes back. The ID token (its `aud` is the client id) is what the
// console then sends keyauth, which validates it as a JWT of the principals file's [[issuer]].

import * as oauth from "oauth4webapi";

/** The provider keyauth names: its issuer (`iss`, exactly) and the console's client id there. */
export interface OidcConfig {
  issuer: string;
  client_id: string;
}

const PENDING = "keyauth.oidc-pending";
const SCOPE = "openid profile email";

interface Pending {
  state: string;
  verifier: string;
  nonce: string;
  /** The console's page when the sign-in started, to come back to. */
  hash: string;
}

/** How the console may sign in: `null` when keyauth offers token sign-in only. */
export async function loadConfig(): Promise<OidcConfig | null> {
  const response = await fetch("/console/config.json", { cache: "no-cache" });
  if (!response.ok) throw new Error(`keyauth did not answer its console settings (HTTP ${response.status}).`);
  const body = (await response.json()) as { oidc?: OidcConfig | null };
  return body.oidc ?? null;
}

/** The provider's host, as the console names it ("Sign in with idp.example.com"). */
export function providerName(config: OidcConfig): string {
  return new URL(config.issuer).host;
}

function redirectUri(): string {
  return `${window.location.origin}/`;
}

/** Plain HTTP is allowed to a loopback provider only (as keyauth allows its jwks_url). */
function options(config: OidcConfig): { [oauth.allowInsecureRequests]?: boolean } {
  const url = new URL(config.issuer);
  const loopback = ["localhost", "[::1]"].includes(url.hostname) || /^127\.\d+\.\d+\.\d+$/.test(url.hostname);
  return url.protocol === "http:" && loopback ? { [oauth.allowInsecureRequests]: true } : {};
}

async function discover(config: OidcConfig): Promise<oauth.AuthorizationServer> {
  const issuer = new URL(config.issuer);
  const response = await oauth.discoveryRequest(issuer, { algorithm: "oidc", ...options(config) });
  return oauth.processDiscoveryResponse(issuer, response);
}

/** Goes to the provider's authorization endpoint; the browser comes back to `/?code=…&state=…`. */
export async function startSignIn(config: OidcConfig): Promise<void> {
  const as = await discover(config);
  if (!as.authorization_endpoint) throw new Error(`${config.issuer} names no authorization endpoint.`);
  const pending: Pending = {
    state: oauth.generateRandomState(),
    verifier: oauth.generateRandomCodeVerifier(),
    nonce: oauth.generateRandomNonce(),
    hash: window.location.hash,
  };
  const url = new URL(as.authorization_endpoint);
  url.searchParams.set("client_id", config.client_id);
  url.searchParams.set("redirect_uri", redirectUri());
  url.searchParams.set("response_type", "code");
  url.searchParams.set("scope", SCOPE);
  url.searchParams.set("code_challenge", await oauth.calculatePKCECodeChallenge(pending.verifier));
  url.searchParams.set("code_challenge_method", "S256");
  url.searchParams.set("state", pending.state);
  url.searchParams.set("nonce", pending.nonce);
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  window.location.assign(url.href);
}

/** Whether this page load is the provider sending the browser back. */
export function isCallback(): boolean {
  const params = new URLSearchParams(window.location.search);
  return params.has("state") && (params.has("code") || params.has("error"));
}

/**
 * Completes a sign-in the provider sent the browser back from: the code and state leave the
 * address at once, the pending verifier leaves sessionStorage, and the code is exchanged for
 * the ID token, whose claims oauth4webapi checks (issuer, audience, nonce, times).
 */
export async function finishSignIn(config: OidcConfig): Promise<string> {
  const params = new URLSearchParams(window.location.search);
  const saved = sessionStorage.getItem(PENDING);
  sessionStorage.removeItem(PENDING);
  const pending = saved === null ? null : (JSON.parse(saved) as Pending);
  history.replaceState(null, "", `${window.location.pathname}${pending?.hash ?? window.location.hash}`);
  if (pending === null) throw new Error("This tab started no sign-in (or it was completed already). Sign in again.");
  const as = await discover(config);
  const client: oauth.Client = { client_id: config.client_id };
  const callback = oauth.validateAuthResponse(as, client, params, pending.state);
  const response = await oauth.authorizationCodeGrantRequest(
    as,
    client,
    oauth.None(),
    callback,
    redirectUri(),
    pending.verifier,
    options(config),
  );
  const result = await oauth.processAuthorizationCodeResponse(as, client, response, {
    expectedNonce: pending.nonce,
    requireIdToken: true,
  });
  if (!result.id_token) throw new Error(`${config.issuer} answered no ID token.`);
  return result.id_token;
}

/** An OAuth failure as a sentence (never with a token or a code in it). */
export function oidcFailure(config: OidcConfig, e: unknown): string {
  const from = providerName(config);
  if (e instanceof oauth.AuthorizationResponseError || e instanceof oauth.ResponseBodyError) {
    const detail = e.error_description ? ` (${e.error_description})` : "";
    return `${from} refused the sign-in: ${e.error}${detail}.`;
  }
  if (e instanceof TypeError && /fetch/i.test(e.message)) {
    return `${from} could not be reached (its discovery document and token endpoint must be on ${new URL(config.issuer).origin}).`;
  }
  const message = e instanceof Error ? e.message : String(e);
  return `Sign-in with ${from} failed: ${message}`;
}
