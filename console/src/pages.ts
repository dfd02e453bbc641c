// The pages: applications, one application's keys, one key, the audit trail. Each renders into
// the element it is given; a page left before its answers arrive writes into a detached
// element, harmlessly. Controls exist only for the roles that allow them (`may`): create, roll
// and permissions with keys.issue, revoke with keys.revoke; a page needing keys.read says so.

import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { api } from "./api";
import { catalog, permissionGrid, permissionSummary } from "./catalog";
import { createKey, revokeKey, rollKey } from "./dialogs";
import { h, replace } from "./dom";
import { type ErrorBox, errorBox } from "./errors";
import { cannotRead, may } from "./session";
import { EVENT_LABEL, STATE_LABEL, type Shown, environmentName, plural, shownState, stateBadge, time } from "./format";
import {
  type ApiKey,
  type ApplicationSummary,
  Environment,
  type KeyCounts,
  type KeyEvent,
  KeyEventType,
  KeyState,
} from "./gen/keyauth/v1/keyauth_pb";

/** Where a page goes: `#/…` routes (ids are public; the token is never in a URL). */
export const link = {
  applications: () => "#/",
  keys: (app: string, env: "test" | "live" = "test", state = "") =>
    `#/apps/${encodeURIComponent(app)}?env=${env}${state ? `&state=${state}` : ""}`,
  key: (id: string) => `#/keys/${encodeURIComponent(id)}`,
  audit: (type = "") => `#/audit${type ? `?type=${type}` : ""}`,
};

function navigate(to: string): void {
  if (window.location.hash === to) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else window.location.hash = to;
}

function loading(): HTMLElement {
  return h("p", { class: "loading", role: "status" }, "Loading…");
}

/**
 * A paged list: `page(token)` reads from `token` ("" first), shows what it read and returns the
 * next page's token ("" on the last). `load` reads the next page (the first, at the start); the
 * "Load more" button does the same and is hidden on the last page. A failed read shows in
 * `errors`.
 */
function pager(
  page: (pageToken: string) => Promise<string>,
  errors: ErrorBox,
): { button: HTMLButtonElement; load: () => Promise<void> } {
  let pageToken = "";
  const load = async () => {
    try {
      pageToken = await page(pageToken);
      button.hidden = pageToken === "";
    } catch (e) {
      errors.show(e);
    }
  };
  const button = h("button", {
    type: "button",
    class: "more",
    onclick: async () => {
      button.disabled = true;
      await load();
      button.disabled = false;
    },
  }, "Load more");
  return { button, load };
}

function counts(c: KeyCounts | undefined): string {
  if (!c) return "none";
  const parts = [`${c.active} active`];
  if (c.expired > 0n) parts.push(`${c.expired} expired`);
  if (c.revoked > 0n) parts.push(`${c.revoked} revoked`);
  return parts.join(", ");
}

export async function applicationsPage(root: HTMLElement): Promise<void> {
  const errors = errorBox();
  const create = may("keys.issue")
    ? h("button", {
        type: "button",
        class: "primary",
        onclick: () =>
          createKey(null, Environment.TEST, (key) => navigate(link.keys(key.applicationId, environmentName(key.environment)))).catch(errors.show),
      }, "Create key")
    : null;
  const head = h("div", { class: "page-head" }, h("h1", {}, "Applications"), create);
  if (!may("keys.read")) {
    replace(root, head, errors.element, cannotRead("the applications and their keys"));
    return;
  }
  const body = h("tbody", {});
  const { button: next, load } = pager(async (pageToken) => {
    const answer = await api.listApplications({ pageSize: 50, pageToken });
    body.append(...answer.applications.map(row));
    if (body.children.length === 0) {
      const none = may("keys.issue") ? "No application has keys yet. Create the first key." : "No application has keys yet.";
      body.append(h("tr", {}, h("td", { colspan: 3 }, none)));
    }
    return answer.nextPageToken;
  }, errors);
  const row = (app: ApplicationSummary) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, h("a", { href: link.keys(app.applicationId) }, app.applicationId)),
      h("td", {}, counts(app.test)),
      h("td", {}, counts(app.live)),
    );
  replace(
    root,
    head,
    errors.element,
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Application"), h("th", { scope: "col" }, "Test keys"), h("th", { scope: "col" }, "Live keys"))),
      body,
    ),
    next,
  );
  await load();
}

const STATE_FILTERS: Shown[] = ["active", "grace", "expired", "revoked"];

/** The API's state for each state the console shows. */
const API_STATE: Record<Shown, KeyState> = {
  active: KeyState.ACTIVE,
  grace: KeyState.ACTIVE,
  expired: KeyState.EXPIRED,
  revoked: KeyState.REVOKED,
};

export async function keysPage(root: HTMLElement, app: string, params: URLSearchParams): Promise<void> {
  const env = params.get("env") === "live" ? "live" : "test";
  const stateFilter = STATE_FILTERS.find((s) => s === params.get("state")) ?? null;
  const environment = env === "live" ? Environment.LIVE : Environment.TEST;
  const errors = errorBox();
  const body = h("tbody", {});
  const shown = h("p", { class: "count", role: "status" });
  const refresh = () => navigate(link.keys(app, env, stateFilter ?? ""));
  // The API filters by its three states; "active" and "grace" (an active key rolled, in its
  // grace period) split its active keys here, reading pages until a page's worth matches (at
  // most 20 pages per click).
  const states = stateFilter === null ? [] : [API_STATE[stateFilter]];
  const { button: next, load } = pager(async (from) => {
    let pageToken = from;
    let matched = 0;
    for (let pages = 0; pages < 20; pages++) {
      const answer = await api.listKeys({ applicationId: app, environment, states, pageSize: 50, pageToken });
      pageToken = answer.nextPageToken;
      const rows = answer.keys.filter((k) => stateFilter === null || shownState(k) === stateFilter).map(row);
      body.append(...rows);
      matched += rows.length;
      if (matched >= 50 || pageToken === "") break;
    }
    shown.textContent = `${plural(body.children.length, "key")} shown${pageToken ? "; more below." : "."}`;
    return pageToken;
  }, errors);
  const mayRoll = may("keys.issue");
  const mayRevoke = may("keys.revoke");
  const actions = (key: ApiKey) =>
    h(
      "div",
      { class: "row-actions" },
      mayRoll
        ? h("button", { type: "button", disabled: key.state !== KeyState.ACTIVE || key.replacedByKeyId !== "", onclick: () => rollKey(key, refresh), "aria-label": `Roll key ${key.name}` }, "Roll key")
        : null,
      mayRevoke
        ? h("button", { type: "button", class: "danger", disabled: key.state === KeyState.REVOKED, onclick: () => revokeKey(key, refresh), "aria-label": `Revoke key ${key.name}` }, "Revoke")
        : null,
    );
  const row = (key: ApiKey) =>
    h(
      "tr",
      { "data-key-id": key.id },
      h("th", { scope: "row" }, h("a", { href: link.key(key.id) }, key.name)),
      h("td", {}, h("code", {}, key.redacted)),
      h("td", {}, stateBadge(key)),
      h("td", {}, key.restricted ? "Restricted" : "Standard"),
      h("td", {}, time(key.createTime)),
      h("td", {}, time(key.expireTime, "Never")),
      h("td", {}, time(key.lastUsedTime, "Never")),
      mayRoll || mayRevoke ? h("td", {}, actions(key)) : null,
    );
  const envSwitch = h(
    "div",
    { class: "switch", role: "group", "aria-label": "Environment" },
    (["test", "live"] as const).map((e) =>
      h("a", { href: link.keys(app, e, stateFilter ?? ""), class: `env-${e}`, "aria-current": e === env ? "page" : undefined }, e === "test" ? "Test data" : "Live data"),
    ),
  );
  const filter = h(
    "select",
    {
      id: "state-filter",
      onchange: () => navigate(link.keys(app, env, filter.value)),
    },
    h("option", { value: "" }, "All states"),
    STATE_FILTERS.map((s) => h("option", { value: s, selected: s === stateFilter }, STATE_LABEL[s])),
  );
  const crumbs = h("p", { class: "crumbs" }, h("a", { href: link.applications() }, "Applications"), " / ", app);
  const head = h(
    "div",
    { class: "page-head" },
    h("h1", {}, `API keys of ${app}`),
    may("keys.issue")
      ? h("button", { type: "button", class: "primary", onclick: () => createKey(app, environment, refresh).catch(errors.show) }, "Create key")
      : null,
  );
  if (!may("keys.read")) {
    replace(root, crumbs, head, errors.element, cannotRead(`the keys of ${app}`));
    return;
  }
  const columns = ["Name", "Key", "State", "Type", "Created", "Expires", "Last used"];
  if (mayRoll || mayRevoke) columns.push("Actions");
  replace(
    root,
    crumbs,
    head,
    h("div", { class: `toolbar env-banner-${env}` }, envSwitch, h("label", { for: "state-filter" }, "State "), filter),
    errors.element,
    h(
      "table",
      { class: "keys" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          columns.map((c) => h("th", { scope: "col" }, c)),
        ),
      ),
      body,
    ),
    shown,
    next,
  );
  await load();
}

function eventDetails(event: KeyEvent): (Node | string)[] {
  const parts: (Node | string)[] = [];
  if (event.relatedKeyId) parts.push("new key ", h("a", { href: link.key(event.relatedKeyId) }, event.relatedKeyId), " ");
  if (event.changedPaths.length) parts.push(`changed: ${event.changedPaths.join(", ")} `);
  if (event.source) parts.push(`source: ${event.source} `);
  if (event.url) parts.push(`found at: ${event.url} `);
  if (event.count > 1n) parts.push(`${event.count} times `);
  return parts;
}

function who(event: KeyEvent): string {
  // The principal that acted (its name), else the operator id of older events.
  const actor = event.actor?.name || event.operatorId;
  return [actor && `by ${actor}`, event.peer && `from ${event.peer}`].filter(Boolean).join(" ");
}

export async function keyPage(root: HTMLElement, id: string): Promise<void> {
  if (!may("keys.read")) {
    replace(root, h("p", { class: "crumbs" }, h("a", { href: link.applications() }, "Applications")), cannotRead(`key ${id}`));
    return;
  }
  replace(root, loading());
  const errors = errorBox();
  let key: ApiKey;
  try {
    key = (await api.getKey({ keyId: id })).key!;
  } catch (e) {
    errors.show(e);
    replace(root, h("p", { class: "crumbs" }, h("a", { href: link.applications() }, "Applications")), errors.element);
    return;
  }
  const env = environmentName(key.environment);
  const refresh = () => navigate(link.key(key.id));
  const facts: [string, Node | string][] = [
    ["Key id", h("code", {}, key.id)],
    ["Key", h("code", {}, key.redacted)],
    ["Application", h("a", { href: link.keys(key.applicationId, env) }, key.applicationId)],
    ["Environment", env === "live" ? "Live (production)" : "Test (sandbox)"],
    ["State", stateBadge(key)],
    ["Type", key.restricted ? "Restricted" : "Standard (every permission)"],
    ["Created", time(key.createTime)],
    ["Expires", time(key.expireTime, "Never")],
    ["Last used", time(key.lastUsedTime, "Never")],
  ];
  if (key.revokeTime) facts.push(["Revoked", time(key.revokeTime)], ["Reason", key.revokeReason || "—"]);
  if (key.replacedByKeyId) facts.push(["Replaced by", h("a", { href: link.key(key.replacedByKeyId) }, key.replacedByKeyId)]);
  const metadata = Object.entries(key.metadata);

  const permissions = h("section", { "aria-labelledby": "perm-title" }, h("h2", { id: "perm-title" }, "Permissions"));
  if (!key.restricted) {
    permissions.append(h("p", {}, "A standard key: every permission of the catalog."));
  } else if (key.state !== KeyState.ACTIVE || !may("keys.issue")) {
    permissions.append(h("p", {}, permissionSummary(key.permissions)));
  } else {
    const saved = h("p", { role: "status", class: "saved" });
    const permErrors = errorBox();
    try {
      const grid = permissionGrid(await catalog(), key.permissions);
      const save = h("button", {
        type: "button",
        class: "primary",
        onclick: async () => {
          permErrors.clear();
          saved.textContent = "";
          const chosen = grid.permissions();
          if (chosen.length === 0) {
            permErrors.show("Tick at least one permission: a key with none would be refused everything.");
            return;
          }
          save.disabled = true;
          try {
            const updated = await api.updateKey({
              key: { ...key, permissions: chosen },
              updateMask: create(FieldMaskSchema, { paths: ["permissions"] }),
            });
            key = updated.key!;
            saved.textContent = `Saved: ${permissionSummary(key.permissions)}.`;
            await timeline(key.id);
          } catch (e) {
            permErrors.show(e);
          } finally {
            save.disabled = false;
          }
        },
      }, "Save permissions");
      permissions.append(grid.element, permErrors.element, h("div", { class: "actions" }, save, saved));
    } catch (e) {
      permErrors.show(e);
      permissions.append(permErrors.element);
    }
  }

  const events = h("ol", { class: "timeline" });
  const timelineErrors = errorBox();
  async function timeline(keyId: string): Promise<void> {
    try {
      const answer = await api.listKeyEvents({ keyId, pageSize: 100 });
      replace(
        events,
        answer.events.map((event) =>
          h(
            "li",
            { class: `event event-${KeyEventType[event.type].toLowerCase()}` },
            h("strong", {}, EVENT_LABEL[event.type]),
            " ",
            time(event.eventTime),
            " ",
            h("span", { class: "who" }, who(event)),
            h("div", { class: "details" }, eventDetails(event), event.requestId ? h("span", { class: "request-id" }, `request ${event.requestId}`) : ""),
          ),
        ),
      );
    } catch (e) {
      timelineErrors.show(e);
    }
  }

  replace(
    root,
    h(
      "p",
      { class: "crumbs" },
      h("a", { href: link.applications() }, "Applications"),
      " / ",
      h("a", { href: link.keys(key.applicationId, env) }, key.applicationId),
      " / ",
      key.name,
    ),
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, key.name),
      h(
        "div",
        { class: "row-actions" },
        may("keys.issue")
          ? h("button", { type: "button", disabled: key.state !== KeyState.ACTIVE || key.replacedByKeyId !== "", onclick: () => rollKey(key, (k) => navigate(link.key(k.id))) }, "Roll key")
          : null,
        may("keys.revoke")
          ? h("button", { type: "button", class: "danger", disabled: key.state === KeyState.REVOKED, onclick: () => revokeKey(key, refresh) }, "Revoke")
          : null,
      ),
    ),
    errors.element,
    h("dl", { class: "facts" }, facts.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])),
    metadata.length
      ? h(
          "section",
          { "aria-labelledby": "meta-title" },
          h("h2", { id: "meta-title" }, "Metadata"),
          h("table", {}, h("tbody", {}, metadata.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v))))),
        )
      : null,
    permissions,
    h("section", { "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title" }, "Audit trail"), timelineErrors.element, events),
  );
  await timeline(key.id);
}

const EVENT_TYPES = [
  KeyEventType.ISSUED,
  KeyEventType.ROLLED,
  KeyEventType.REVOKED,
  KeyEventType.UPDATED,
  KeyEventType.EXPOSED,
  KeyEventType.EXPIRING,
  KeyEventType.OPERATOR_AUTH_FAILED,
  KeyEventType.PERMISSION_DENIED,
];

export async function auditPage(root: HTMLElement, params: URLSearchParams): Promise<void> {
  if (!may("keys.read")) {
    replace(root, h("div", { class: "page-head" }, h("h1", {}, "Audit trail")), cannotRead("the audit trail"));
    return;
  }
  const chosen = EVENT_TYPES.find((t) => KeyEventType[t].toLowerCase() === params.get("type")) ?? null;
  const errors = errorBox();
  const body = h("tbody", {});
  const { button: next, load } = pager(async (pageToken) => {
    const answer = await api.listKeyEvents({ pageSize: 100, pageToken, types: chosen === null ? [] : [chosen] });
    body.append(
      ...answer.events.map((event) =>
        h(
          "tr",
          {},
          h("td", {}, time(event.eventTime)),
          h("td", {}, EVENT_LABEL[event.type]),
          h("td", {}, event.keyId ? h("a", { href: link.key(event.keyId) }, event.keyId) : "—"),
          h("td", {}, event.applicationId || "—"),
          h("td", {}, who(event) || "—"),
          h("td", {}, eventDetails(event)),
          h("td", {}, event.requestId ? h("code", {}, event.requestId) : "—"),
        ),
      ),
    );
    if (body.children.length === 0) body.append(h("tr", {}, h("td", { colspan: 7 }, "No events.")));
    return answer.nextPageToken;
  }, errors);
  const filter = h(
    "select",
    { id: "type-filter", onchange: () => navigate(link.audit(filter.value)) },
    h("option", { value: "" }, "All events"),
    EVENT_TYPES.map((t) => h("option", { value: KeyEventType[t].toLowerCase(), selected: t === chosen }, EVENT_LABEL[t])),
  );
  replace(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "Audit trail")),
    h("div", { class: "toolbar" }, h("label", { for: "type-filter" }, "Type "), filter),
    errors.element,
    h(
      "table",
      { class: "audit" },
      h("thead", {}, h("tr", {}, ["When", "Event", "Key", "Application", "Who", "Details", "Request id"].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
    next,
  );
  await load();
}
