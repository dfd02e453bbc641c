// Building the page: elements from plain data (text is always set as text, never parsed as
// HTML, so nothing an API answer holds can become markup), and modal dialogs.

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | boolean | number | undefined | ((event: Event) => void)>;

/** An element: `h("button", { class: "primary", onclick: go }, "Save")`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") {
      element.addEventListener(name.replace(/^on/, ""), value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(parent: Node, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

/** Replaces everything in `parent` with `children`. */
export function replace(parent: Element, ...children: (Child | Child[])[]): void {
  parent.replaceChildren();
  append(parent, children);
}

/** A modal `<dialog>` (focus trapped, Escape closes it); removed from the page when closed. */
let dialogs = 0;

export function modal(title: string, build: (close: () => void) => Node[]): HTMLDialogElement {
  const titleId = `dialog-title-${++dialogs}`;
  const dialog = h("dialog", { "aria-labelledby": titleId });
  const close = () => dialog.close();
  dialog.addEventListener("close", () => {
    // Nothing of a closed dialog stays on the page (a secret it showed included).
    dialog.replaceChildren();
    dialog.remove();
  });
  append(dialog, [h("h2", { id: titleId }, title), ...build(close)]);
  document.body.appendChild(dialog);
  dialog.showModal();
  return dialog;
}

/** A labelled form field; `hint` is read by screen readers with the field. */
export function field(label: string, input: HTMLElement, hint?: string): HTMLElement {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const hintId = hint ? `${id}-hint` : undefined;
  if (hintId) input.setAttribute("aria-describedby", hintId);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
  );
}
