// The sign-in page: an operator token, and with OIDC configured "Sign in with <provider>" beside
// it. A notice (a session that expired, a sign-in the provider or keyauth refused) is shown above
// both.

import { setToken } from "./api";
import { field, h, replace } from "./dom";
import { errorBox } from "./errors";
import { type OidcConfig, oidcFailure, providerName, startSignIn } from "./oidc";
import { loadPrincipal } from "./session";

export interface SignInOptions {
  oidc: OidcConfig | null;
  /** Said first: why the operator is here again, or what went wrong. */
  notice?: string;
  /** Called once a credential is kept and its principal known. */
  signedIn: () => void;
}

export function signInPage(app: HTMLElement, { oidc, notice, signedIn }: SignInOptions): void {
  const errors = errorBox();
  const input = h("input", { type: "password", required: true, autocomplete: "off", spellcheck: "false" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    {
      class: "token-sign-in",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        errors.clear();
        const candidate = input.value.trim();
        submit.disabled = true;
        try {
          // Any authenticated caller may ask who it is: a wrong token is refused here.
          await loadPrincipal(candidate);
          setToken(candidate);
          input.value = "";
          signedIn();
        } catch (e) {
          errors.show(e);
          input.select();
        } finally {
          submit.disabled = false;
        }
      },
    },
    field(
      "Operator token",
      input,
      "KEYAUTH_ADMIN_TOKEN, or a token of the principals file. Kept in this tab only (sessionStorage) until you sign out or close it.",
    ),
    h("div", { class: "actions" }, submit),
  );
  const withProvider = oidc === null ? null : oidcButton(oidc, errors.show);
  replace(
    app,
    h(
      "main",
      { id: "main" },
      h(
        "div",
        { class: "sign-in" },
        h("h1", {}, "keyauth console"),
        h("p", {}, "Manage the API keys of the health-records API: issue, roll, revoke, and read the audit trail."),
        notice ? h("div", { class: "notice", role: "alert" }, h("p", {}, notice)) : null,
        withProvider,
        withProvider ? h("p", { class: "or" }, "or with a token") : null,
        form,
        errors.element,
      ),
    ),
  );
  input.focus();
}

function oidcButton(oidc: OidcConfig, fail: (e: unknown) => void): HTMLElement {
  const name = providerName(oidc);
  const button = h(
    "button",
    {
      type: "button",
      class: "primary oidc",
      onclick: async () => {
        button.disabled = true;
        try {
          await startSignIn(oidc); // leaves the page
        } catch (e) {
          fail(oidcFailure(oidc, e));
          button.disabled = false;
        }
      },
    },
    `Sign in with ${name}`,
  );
  return h(
    "div",
    { class: "actions oidc-sign-in" },
    button,
    h("p", { class: "hint" }, `Your roles and applications come from ${name}.`),
  );
}
