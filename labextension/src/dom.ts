/** A tiny element builder for the panels (no framework: the panels are small tables). */

type Child = Node | string | null | undefined | false;

export interface IAttrs {
  className?: string;
  title?: string;
  text?: string;
  href?: string;
  target?: string;
  data?: Record<string, string>;
  onClick?: (event: Event) => void;
  attrs?: Record<string, string>;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: IAttrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.className) {
    el.className = props.className;
  }
  if (props.title) {
    el.title = props.title;
  }
  if (props.text !== undefined) {
    el.textContent = props.text;
  }
  if (props.href !== undefined) {
    el.setAttribute('href', props.href);
  }
  if (props.target) {
    el.setAttribute('target', props.target);
    el.setAttribute('rel', 'noopener noreferrer');
  }
  for (const [k, v] of Object.entries(props.data || {})) {
    el.dataset[k] = v;
  }
  for (const [k, v] of Object.entries(props.attrs || {})) {
    el.setAttribute(k, v);
  }
  if (props.onClick) {
    const handler = props.onClick;
    el.addEventListener('click', event => {
      event.stopPropagation();
      handler(event);
    });
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    el.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return el;
}

/** A small text button with a data-action attribute (the browser tests find it by that). */
export function button(
  label: string,
  action: string,
  onClick: () => void,
  title?: string
): HTMLButtonElement {
  const b = h('button', {
    className: 'lp-button',
    text: label,
    title: title || label,
    data: { action },
    onClick: () => onClick()
  });
  b.type = 'button';
  return b;
}

/** A status pill: "running", "succeeded"... */
export function pill(text: string, className: string): HTMLSpanElement {
  return h('span', { className: `lp-pill ${className}`, text, data: { status: text } });
}

/** Replace an element's children. */
export function setChildren(el: HTMLElement, ...children: Child[]): void {
  el.replaceChildren();
  for (const child of children) {
    if (child) {
      el.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
  }
}
