// The explorer's shell: the page module named by the path draws into <main> from the JSON API; what
// the pages share (requests, elements, readiness) is here.

const PAGES = { "/": "model", "/layer": "layer", "/unit": "unit", "/live": "live", "/compare": "compare" };
export const METHODS = ["deconvnet", "guided", "backprop"];

/** GET (or `options`) a JSON endpoint; its `error` becomes the thrown Error's message. */
export async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

/** A URL with the query parameters that have a value. */
export function url(path, params = {}) {
  const kept = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "");
  return kept.length ? `${path}?${new URLSearchParams(kept)}` : path;
}

/** An element: attributes (on* are listeners), then children (strings, nodes, arrays; null skipped). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** A picture; lazy unless it is on the first screen of its page. */
export function img(src, alt, { lazy = true, width, height, cls } = {}) {
  return el("img", { src, alt, loading: lazy ? "lazy" : null, width, height, class: cls, decoding: "async" });
}

/** Resolves once every picture has loaded (or failed). */
export function loaded(images) {
  return Promise.all(images.map((i) => (i.complete ? null : new Promise((done) => {
    i.addEventListener("load", done, { once: true });
    i.addEventListener("error", done, { once: true });
  }))));
}

/** The page's first screen is drawn: mark it once its visible pictures have loaded (the budgets' end point). */
export async function ready(page) {
  const visible = [...page.querySelectorAll("img")].filter((i) => i.getBoundingClientRect().top < innerHeight);
  await loaded(visible);
  performance.mark("zf-ready");
  document.body.dataset.ready = "1";
}

export function format(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toPrecision(digits);
}

export function shape(dims) {
  return `(${dims.map((d) => (d < 0 ? "N" : d)).join(", ")})`;
}

/** The share of a class in a unit's top-k as a bar list. */
export function histogram(rows, k) {
  return el("ul", { class: "hist" }, rows.map(([label, count]) =>
    el("li", {}, el("span", {}, label), el("span", { class: "bar", style: `width:${(100 * count) / k}%` }), el("span", {}, `${count}/${k}`))));
}

/** A box (top, left, bottom, right) over an image of `size` (height, width), in percent, outlined. */
export function box([top, left, bottom, right], [height, width]) {
  const pct = (v, of) => `${(100 * v) / of}%`;
  return el("span", { class: "box", style: `top:${pct(top, height)};left:${pct(left, width)};height:${pct(bottom - top, height)};width:${pct(right - left, width)}` });
}

/** Replace a node's children (strings, nodes, arrays; null and false skipped). */
export function put(where, ...children) {
  where.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

export function fail(where, error) {
  where.append(el("p", { class: "error" }, String(error.message || error)));
}

async function main() {
  const page = document.getElementById("page");
  try {
    const module = await import(`./${PAGES[location.pathname] || "model"}.js`);
    await module.show(page, new URLSearchParams(location.search));
  } catch (error) {
    page.replaceChildren();
    fail(page, error);
    document.body.dataset.ready = "error";
  }
}

main();
