// The key authority service over gRPC-Web, at the origin that served the page. The credential
// (an operator token, or the ID token of a sign-in with OIDC) lives in sessionStorage only (gone
// when the tab closes; never in a URL, a cookie or localStorage) and is sent as
// `authorization: Bearer …` on each call. When keyauth stops accepting it (UNAUTHENTICATED: an
// ID token past its expiry, a token removed), the console is told (`onCredentialRefused`).

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { KeyAuthorityService } from "./gen/keyauth/v1/keyauth_pb";

const TOKEN = "keyauth.operator-token";
/** The issuer the token came from, for a sign-in with OIDC; absent for an operator token. */
const ISSUER = "keyauth.oidc-issuer";

export function token(): string | null {
  return sessionStorage.getItem(TOKEN);
}

/** Keeps the credential: an operator token, or an ID token of `issuer`. */
export function setToken(value: string, issuer: string | null = null): void {
  sessionStorage.setItem(TOKEN, value);
  if (issuer === null) sessionStorage.removeItem(ISSUER);
  else sessionStorage.setItem(ISSUER, issuer);
}

/** The issuer of the kept ID token; `null` for an operator token. */
export function tokenIssuer(): string | null {
  return sessionStorage.getItem(ISSUER);
}

export function forgetToken(): void {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(ISSUER);
}

let credentialRefused: () => void = () => {};

/** What to do when keyauth refuses the kept credential (UNAUTHENTICATED). */
export function onCredentialRefused(handler: () => void): void {
  credentialRefused = handler;
}

/** A request id of our own on each call, so an error can name its call even without an answer. */
export function newRequestId(): string {
  return `console-${crypto.randomUUID()}`;
}

const headers: Interceptor = (next) => async (request) => {
  const bearer = token();
  // A call with an authorization of its own (a sign-in trying a token) is not the kept one's.
  const kept = bearer !== null && !request.header.has("authorization");
  if (kept) {
    request.header.set("authorization", `Bearer ${bearer}`);
  }
  if (!request.header.has("x-request-id")) {
    request.header.set("x-request-id", newRequestId());
  }
  try {
    return await next(request);
  } catch (e) {
    const error = ConnectError.from(e);
    if (!error.metadata.has("x-request-id")) {
      error.metadata.set("x-request-id", request.header.get("x-request-id") ?? "");
    }
    if (kept && error.code === Code.Unauthenticated && token() === bearer) credentialRefused();
    throw error;
  }
};

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  interceptors: [headers],
  defaultTimeoutMs: 15_000,
});

export const api = createClient(KeyAuthorityService, transport);

/** Call options making a change safe to retry: the same idempotency key for one operator action. */
export function once(idempotencyKey: string): { headers: Record<string, string> } {
  return { headers: { "idempotency-key": idempotencyKey } };
}

/** An API error as a sentence an operator can act on, and the call's request id. */
export function describe(e: unknown): { sentence: string; requestId: string | null } {
  const error = ConnectError.from(e);
  const requestId = error.metadata.get("x-request-id") || null;
  const said = error.rawMessage;
  const sentence = (() => {
    switch (error.code) {
      case Code.Unauthenticated:
        return `keyauth refused the operator token: ${said}. Log out and sign in with a valid token.`;
      case Code.PermissionDenied:
        return `Not allowed: ${said}.`;
      case Code.InvalidArgument:
        return `keyauth refused the request: ${said}.`;
      case Code.NotFound:
        return `Not found: ${said}.`;
      case Code.FailedPrecondition:
        return `That cannot be done to this key now: ${said}.`;
      case Code.AlreadyExists:
      case Code.Aborted:
        return `The change conflicted with another one: ${said}. Reload and try again.`;
      case Code.ResourceExhausted:
        return `Too many requests: ${said}. Wait a moment, then try again.`;
      case Code.Unavailable:
        return `keyauth is unavailable right now (${said}). Try again in a moment.`;
      case Code.DeadlineExceeded:
        return "keyauth did not answer in time. Try again in a moment.";
      default:
        return `Something went wrong: ${said || Code[error.code]}.`;
    }
  })();
  return { sentence, requestId };
}
