// Errors as the operator reads them: a sentence saying what to do, and the call's request id
// (to find the call in keyauth's logs).

import { describe } from "./api";
import { h } from "./dom";

/** An error box: the sentence and the request id of a failed call (role=alert: read out at once). */
export interface ErrorBox {
  element: HTMLElement;
  /** An API error, or a sentence of the console's own. */
  show(e: unknown): void;
  clear(): void;
}

export function errorBox(): ErrorBox {
  const element = h("div", { class: "error", role: "alert", hidden: true });
  return {
    element,
    show(e) {
      const { sentence, requestId } = typeof e === "string" ? { sentence: e, requestId: null } : describe(e);
      element.replaceChildren(
        h("p", {}, sentence),
        requestId ? h("p", { class: "request-id" }, "Request id: ", h("code", {}, requestId)) : "",
      );
      element.hidden = false;
    },
    clear() {
      element.hidden = true;
      element.replaceChildren();
    },
  };
}
