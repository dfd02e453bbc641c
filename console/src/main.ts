// The console's entry: sign-in with the operator token, the frame (navigation, sign-out) and the
// hash router that picks a page.

import { api, forgetToken, setToken, token } from "./api";
import { field, h, replace } from "./dom";
import { errorBox } from "./errors";
import { applicationsPage, auditPage, keyPage, keysPage, link } from "./pages";

const app = document.getElementById("app")!;

function signIn(): void {
  const errors = errorBox();
  const input = h("input", { type: "password", required: true, autocomplete: "off", spellcheck: "false" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    {
      class: "sign-in",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        errors.clear();
        const candidate = input.value.trim();
        submit.disabled = true;
        try {
          // An operator RPC that changes nothing: a wrong token is refused here.
          await api.listApplications({ pageSize: 1 }, { headers: { authorization: `Bearer ${candidate}` } });
          setToken(candidate);
          input.value = "";
          render();
        } catch (e) {
          errors.show(e);
          input.select();
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("h1", {}, "keyauth console"),
    h("p", {}, "Manage the API keys of the health-records API: issue, roll, revoke, and read the audit trail."),
    field(
      "Operator token",
      input,
      "The server's KEYAUTH_ADMIN_TOKEN. Kept in this tab only (sessionStorage) until you sign out or close it.",
    ),
    errors.element,
    h("div", { class: "actions" }, submit),
  );
  replace(app, h("main", { id: "main" }, form));
  input.focus();
}

function signOut(): void {
  forgetToken();
  window.location.hash = link.applications();
  signIn();
}

/** The frame and the page the address names. */
function render(): void {
  if (token() === null) {
    signIn();
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

window.addEventListener("hashchange", render);
render();
