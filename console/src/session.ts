// Who is signed in (GetPrincipal, asked once per sign-in or page load) and what the page may
// offer them: the roles decide which controls exist at all. keyauth still checks every call;
// hiding a control only spares the operator a refusal.

import { api, tokenIssuer } from "./api";
import { h } from "./dom";
import { Environment, type Principal } from "./gen/keyauth/v1/keyauth_pb";

/** The roles the console offers controls by. */
export type Role = "keys.read" | "keys.issue" | "keys.revoke";

let current: Principal | null = null;

/** The principal signed in, once `loadPrincipal` has answered. */
export function principal(): Principal | null {
  return current;
}

/** Asks keyauth who the kept credential is; `credential` overrides it (a sign-in trying one). */
export async function loadPrincipal(credential?: string): Promise<Principal> {
  const options = credential === undefined ? {} : { headers: { authorization: `Bearer ${credential}` } };
  const answer = await api.getPrincipal({}, options);
  if (!answer.principal) throw new Error("keyauth answered GetPrincipal without a principal.");
  current = answer.principal;
  return current;
}

export function forgetPrincipal(): void {
  current = null;
}

/** Whether the principal holds `role` (`admin` holds every one). */
export function may(role: Role): boolean {
  const roles = current?.roles ?? [];
  return roles.includes(role) || roles.includes("admin");
}

/** The header's "Signed in as …": name, the issuer of a sign-in with OIDC, roles and scope. */
export function whoAmI(): HTMLElement {
  const p = current;
  if (p === null) return h("p", { class: "who-am-i" });
  const issuer = p.issuer || tokenIssuer();
  const scope: string[] = [];
  if (p.applications.length) scope.push(`applications ${p.applications.join(", ")}`);
  if (p.environments.length) {
    scope.push(`${p.environments.map((e) => (e === Environment.LIVE ? "live" : "test")).join(", ")} only`);
  }
  return h(
    "p",
    { class: "who-am-i" },
    "Signed in as ",
    h("strong", { class: "principal-name" }, p.name || p.subject),
    issuer ? h("span", { class: "principal-issuer" }, ` via ${hostOf(issuer)}`) : null,
    h("span", { class: "principal-roles" }, ` · ${p.roles.length ? p.roles.join(", ") : "no role"}`),
    scope.length ? h("span", { class: "principal-scope" }, ` · ${scope.join(" · ")}`) : null,
  );
}

function hostOf(issuer: string): string {
  try {
    return new URL(issuer).host;
  } catch {
    return issuer;
  }
}

/** What a page the principal cannot read says instead of its content. */
export function cannotRead(what: string): HTMLElement {
  const roles = current?.roles.length ? current.roles.join(", ") : "none";
  return h(
    "div",
    { class: "notice", role: "status" },
    h("p", {}, `You cannot read ${what}: reading needs the role keys.read (or admin), and your roles are: ${roles}.`),
    h("p", {}, "Ask an administrator for keys.read, or sign in as another principal."),
  );
}
