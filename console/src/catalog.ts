// The permission catalog as a resource × action grid of checkboxes (GetCatalog), for creating a
// restricted key and for editing one's permissions.

import { create } from "@bufbuild/protobuf";
import { api } from "./api";
import { h } from "./dom";
import { type CatalogResource, type Permission, PermissionSchema } from "./gen/keyauth/v1/keyauth_pb";

let cached: Promise<CatalogResource[]> | null = null;

/** The catalog, asked once per page load. */
export function catalog(): Promise<CatalogResource[]> {
  cached ??= api.getCatalog({}).then(
    (answer) => answer.resources,
    (e: unknown) => {
      cached = null;
      throw e;
    },
  );
  return cached;
}

export interface Grid {
  element: HTMLElement;
  /** The ticked permissions, one per resource with at least one action. */
  permissions(): Permission[];
}

/** A table: one row per resource, one column per action any resource has. */
export function permissionGrid(resources: CatalogResource[], ticked: Permission[] = []): Grid {
  const actions = [...new Set(resources.flatMap((r) => r.actions))].sort();
  const has = new Set(ticked.flatMap((p) => p.actions.map((a) => `${p.resource}:${a}`)));
  const boxes: { resource: string; action: string; box: HTMLInputElement }[] = [];
  const rows = resources.map((resource) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, resource.name),
      actions.map((action) => {
        if (!resource.actions.includes(action)) {
          return h("td", { class: "na" }, h("span", { class: "visually-hidden" }, "not applicable"));
        }
        const box = h("input", {
          type: "checkbox",
          name: `${resource.name}:${action}`,
          "aria-label": `${resource.name}: ${action}`,
          checked: has.has(`${resource.name}:${action}`),
        });
        boxes.push({ resource: resource.name, action, box });
        return h("td", {}, box);
      }),
    ),
  );
  const element = h(
    "table",
    { class: "grid" },
    h("caption", {}, "Permissions: tick what the key may do"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Resource"), actions.map((a) => h("th", { scope: "col" }, a)))),
    h("tbody", {}, rows),
  );
  return {
    element,
    permissions() {
      const byResource = new Map<string, string[]>();
      for (const { resource, action, box } of boxes) {
        if (!box.checked) continue;
        byResource.set(resource, [...(byResource.get(resource) ?? []), action]);
      }
      return [...byResource].map(([resource, actions]) => create(PermissionSchema, { resource, actions }));
    },
  };
}

/** `patients: read, write · encounters: read` */
export function permissionSummary(permissions: Permission[]): string {
  return permissions.map((p) => `${p.resource}: ${p.actions.join(", ")}`).join(" · ");
}
