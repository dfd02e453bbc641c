// How keys, times and events read on the page.

import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { h } from "./dom";
import { type ApiKey, Environment, KeyEventType, KeyState } from "./gen/keyauth/v1/keyauth_pb";

/** What the console shows as a key's state: the API's three, and a rolled key in its grace period. */
export type Shown = "active" | "grace" | "expired" | "revoked";

export function shownState(key: ApiKey): Shown {
  switch (key.state) {
    case KeyState.REVOKED:
      return "revoked";
    case KeyState.EXPIRED:
      return "expired";
    default:
      return key.replacedByKeyId !== "" ? "grace" : "active";
  }
}

export const STATE_LABEL: Record<Shown, string> = {
  active: "Active",
  grace: "Expiring (grace period)",
  expired: "Expired",
  revoked: "Revoked",
};

/** The state as a coloured badge that says it in words too (colour is never the only signal). */
export function stateBadge(key: ApiKey): HTMLElement {
  const shown = shownState(key);
  return h("span", { class: `badge state-${shown}` }, STATE_LABEL[shown]);
}

export function environmentName(environment: Environment): "test" | "live" {
  return environment === Environment.LIVE ? "live" : "test";
}

/** `2026-11-30 20:34`, local time: compact, and sorts as it reads. */
export function when(ts: Timestamp | undefined, none = "—"): string {
  if (!ts) return none;
  const d = timestampDate(ts);
  const two = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
}

/** A `<time>` element with the exact instant in its datetime attribute and title. */
export function time(ts: Timestamp | undefined, none = "—"): HTMLElement | string {
  if (!ts) return none;
  const iso = timestampDate(ts).toISOString();
  return h("time", { datetime: iso, title: iso }, when(ts));
}

export const EVENT_LABEL: Record<KeyEventType, string> = {
  [KeyEventType.UNSPECIFIED]: "Unknown",
  [KeyEventType.ISSUED]: "Issued",
  [KeyEventType.ROLLED]: "Rolled",
  [KeyEventType.REVOKED]: "Revoked",
  [KeyEventType.OPERATOR_AUTH_FAILED]: "Operator authentication failed",
  [KeyEventType.EXPOSED]: "Exposed (leaked) and revoked",
  [KeyEventType.UPDATED]: "Updated",
  [KeyEventType.PERMISSION_DENIED]: "Permission denied",
  [KeyEventType.EXPIRING]: "Expiring soon",
};

export function plural(n: number | bigint, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 || n === 1n ? one : many}`;
}
