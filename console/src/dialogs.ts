// The dialogs that change keys: create, roll, revoke, and the once-only secret.

import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { api, once } from "./api";
import { errorBox } from "./errors";
import { catalog, permissionGrid, type Grid } from "./catalog";
import { field, h, modal } from "./dom";
import { environmentName, when } from "./format";
import { type ApiKey, Environment } from "./gen/keyauth/v1/keyauth_pb";

/**
 * Shows a new secret once. Closing the dialog removes it from the page, and nothing else keeps
 * it: callers pass it straight from the answer and keep no reference.
 */
export function showSecret(title: string, key: ApiKey, secret: string, onClosed: () => void): void {
  const dialog = modal(title, (close) => {
    const value = h("input", {
      type: "text",
      readonly: true,
      value: secret,
      class: "secret",
      spellcheck: "false",
      autocomplete: "off",
      "aria-label": "The new API key",
    });
    const copied = h("span", { class: "copied", role: "status" });
    const copy = h(
      "button",
      {
        type: "button",
        class: "primary",
        onclick: async () => {
          value.select();
          try {
            await navigator.clipboard.writeText(value.value);
            copied.textContent = "Copied.";
          } catch {
            copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
          }
        },
      },
      "Copy key",
    );
    return [
      h(
        "p",
        {},
        `This is the only time the full key of “${key.name}” (${environmentName(key.environment)}) is shown: `,
        "keyauth keeps only a hash of it. Store it now in your secret manager.",
      ),
      h("div", { class: "secret-row" }, value, copy, copied),
      h(
        "ul",
        { class: "advice" },
        h("li", {}, "Use it server-side only: never in client-side code or a browser."),
        h("li", {}, "Never commit it to version control: give it to the service as an environment variable."),
      ),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: close }, "I have stored the key — close")),
    ];
  });
  dialog.classList.add("secret-dialog");
  dialog.addEventListener("close", onClosed);
}

/** Create key: name, environment, standard or restricted (the catalog grid), expiry, metadata. */
export async function createKey(
  applicationId: string | null,
  environment: Environment,
  onCreated: (key: ApiKey) => void,
): Promise<void> {
  const resources = await catalog();
  modal("Create key", (close) => {
    const errors = errorBox();
    const app = h("input", { type: "text", required: true, maxlength: 128, value: applicationId ?? "", autocomplete: "off" });
    const name = h("input", { type: "text", required: true, maxlength: 200, autocomplete: "off" });
    const env = (value: Environment, label: string) =>
      h(
        "label",
        { class: "choice" },
        h("input", { type: "radio", name: "environment", value: String(value), checked: value === environment }),
        label,
      );
    const kind = (value: string, label: string, checked: boolean) =>
      h("label", { class: "choice" }, h("input", { type: "radio", name: "kind", value, checked }), label);
    const grid: Grid = permissionGrid(resources);
    const gridBox = h("div", { class: "grid-box", hidden: true }, grid.element);
    const expiry = h("input", { type: "datetime-local" });
    const metadata = h("textarea", { rows: 3, placeholder: "team=billing\nowner=alice@example.com" });
    const form = h(
      "form",
      {
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          const data = new FormData(form);
          const restricted = data.get("kind") === "restricted";
          const permissions = restricted ? grid.permissions() : [];
          if (restricted && permissions.length === 0) {
            errors.show("Tick at least one permission for a restricted key.");
            return;
          }
          const meta: Record<string, string> = {};
          for (const line of metadata.value.split("\n")) {
            if (line.trim() === "") continue;
            const at = line.indexOf("=");
            if (at <= 0) {
              errors.show(`The metadata line “${line.slice(0, 40)}” is not key=value.`);
              return;
            }
            meta[line.slice(0, at).trim()] = line.slice(at + 1).trim();
          }
          // Disabled while the call runs: one click, one key. (No idempotency key: a replay of
          // IssueKey or RollKey needs the server's seal key, which not every server has.)
          submit.disabled = true;
          try {
            const answer = await api.issueKey(
              {
                applicationId: app.value.trim(),
                environment: Number(data.get("environment")) as Environment,
                name: name.value.trim(),
                permissions,
                expireTime: expiry.value ? timestampFromDate(new Date(expiry.value)) : undefined,
                metadata: meta,
              },
            );
            close();
            const key = answer.key!;
            showSecret("Your new key", key, answer.secret, () => onCreated(key));
            answer.secret = "";
          } catch (e) {
            errors.show(e);
          } finally {
            submit.disabled = false;
          }
        },
      },
      applicationId === null
        ? field("Application", app, "The application the key is for, e.g. billing-service.")
        : null,
      field("Name", name, "What the key is for, e.g. “Billing worker”."),
      h("fieldset", {}, h("legend", {}, "Environment"), env(Environment.TEST, "Test (sk_test_, sandbox)"), env(Environment.LIVE, "Live (sk_live_, production)")),
      h(
        "fieldset",
        {
          onchange: () => {
            gridBox.hidden = new FormData(form).get("kind") !== "restricted";
          },
        },
        h("legend", {}, "Permissions"),
        kind("standard", "Standard: every permission of the catalog", true),
        kind("restricted", "Restricted: only the permissions ticked below (recommended)", false),
      ),
      gridBox,
      field("Expires (optional)", expiry, "Leave empty for a key that does not expire."),
      field("Metadata (optional)", metadata, "One key=value per line."),
      errors.element,
    );
    const submit = h("button", { type: "submit", class: "primary" }, "Create key");
    form.appendChild(h("div", { class: "actions" }, h("button", { type: "button", onclick: close }, "Cancel"), submit));
    return [form];
  });
}

const GRACE_CHOICES: { label: string; ms: number }[] = [
  { label: "Now", ms: 0 },
  { label: "1 hour", ms: 3_600_000 },
  { label: "24 hours", ms: 86_400_000 },
  { label: "7 days", ms: 7 * 86_400_000 },
];

/** The sentence saying what a grace period means for the old key. */
function graceConsequence(ms: number): string {
  if (ms === 0) return "The old key stops working now: every caller still using it is refused at once.";
  const until = when(timestampFromDate(new Date(Date.now() + ms)));
  return `The old key keeps working until about ${until}; then it expires. Give every caller the new key before then.`;
}

/** Roll key: a grace choice with its consequence spelled out, then the new secret once. */
export function rollKey(key: ApiKey, onRolled: (newKey: ApiKey) => void): void {
  modal(`Roll key “${key.name}”`, (close) => {
    const errors = errorBox();
    const consequence = h("p", { class: "consequence", "aria-live": "polite" }, graceConsequence(86_400_000));
    const form = h(
      "form",
      {
        onchange: () => {
          consequence.textContent = graceConsequence(Number(new FormData(form).get("grace")));
        },
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          submit.disabled = true;
          try {
            const ms = Number(new FormData(form).get("grace"));
            const answer = await api.rollKey({ keyId: key.id, gracePeriod: durationFromMs(ms) });
            close();
            const rolled = answer.key!;
            showSecret("The new key", rolled, answer.secret, () => onRolled(rolled));
            answer.secret = "";
          } catch (e) {
            errors.show(e);
          } finally {
            submit.disabled = false;
          }
        },
      },
      h("p", {}, `A new key replaces ${key.redacted}, with the same permissions and metadata.`),
      h(
        "fieldset",
        {},
        h("legend", {}, "How long the old key keeps working"),
        GRACE_CHOICES.map((choice) =>
          h(
            "label",
            { class: "choice" },
            h("input", { type: "radio", name: "grace", value: String(choice.ms), checked: choice.ms === 86_400_000 }),
            choice.ms === 86_400_000 ? `${choice.label} (default)` : choice.label,
          ),
        ),
      ),
      consequence,
      errors.element,
    );
    const submit = h("button", { type: "submit", class: "primary" }, "Roll key");
    form.appendChild(h("div", { class: "actions" }, h("button", { type: "button", onclick: close }, "Cancel"), submit));
    return [form];
  });
}

/** Revoke key: a reason and an explicit confirmation. */
export function revokeKey(key: ApiKey, onRevoked: (revoked: ApiKey) => void): void {
  const idempotencyKey = crypto.randomUUID();
  modal(`Revoke key “${key.name}”`, (close) => {
    const errors = errorBox();
    const reason = h("textarea", { rows: 2, maxlength: 500, placeholder: "e.g. leaked in a support ticket" });
    const confirm = h("input", { type: "checkbox", required: true });
    const submit = h("button", { type: "submit", class: "danger" }, "Revoke key");
    const form = h(
      "form",
      {
        onsubmit: async (event: Event) => {
          event.preventDefault();
          errors.clear();
          submit.disabled = true;
          try {
            const answer = await api.revokeKey({ keyId: key.id, reason: reason.value.trim() }, once(idempotencyKey));
            close();
            onRevoked(answer.key!);
          } catch (e) {
            errors.show(e);
          } finally {
            submit.disabled = false;
          }
        },
      },
      h("p", {}, `Requests made with ${key.redacted} will be refused at once, on every instance. This cannot be undone.`),
      field("Reason (kept in the audit trail)", reason),
      h("label", { class: "choice" }, confirm, `I understand that ${key.redacted} stops working now.`),
      errors.element,
      h("div", { class: "actions" }, h("button", { type: "button", onclick: close }, "Cancel"), submit),
    );
    return [form];
  });
}
