// Unit: one channel of a report: its top-k patches beside their reconstructions (deconvnet, guided or
// backprop), the source images with the receptive field outlined, the class make-up, a first layer's
// filter, on demand its optimised image (feature visualisation), the same unit in the other reports
// given (snapshots: its evolution), neighbours.
import { METHODS, api, box, el, fail, format, histogram, img, loaded, put, ready, url } from "./main.js";

export async function show(page, params) {
  const key = params.get("report"), layer = params.get("layer"), channel = Number(params.get("channel"));
  const here = { report: key, layer, channel };
  // the grids' pictures are requested at once, beside the unit's data (the reconstructions take the server longest)
  const patches = img(url(`/api/report/${key}/patches.png`, here), "input patches", { lazy: false });
  const reconstructions = img(url(`/api/report/${key}/reconstructions.png`, { ...here, method: params.get("method") }), "reconstructions", { lazy: false });
  const data = await api(url(`/api/report/${key}/unit`, { layer, channel }));
  const report = data.report;
  let method = params.get("method") || report.method;  // no method asked: the report's own
  reconstructions.alt = `reconstructions by ${method}`;
  document.title = `${layer} channel ${channel} · ${report.name} · zfnet explorer`;
  const caption = el("figcaption", {}, `${method} reconstructions of each patch's strongest activation`);
  const switcher = el("div", { class: "methods", role: "radiogroup" }, METHODS.map((m) => el("label", {},
    el("input", {
      type: "radio", name: "method", value: m, checked: m === method, onchange: () => {
        method = m;
        reconstructions.src = url(`/api/report/${key}/reconstructions.png`, { ...here, method });
        reconstructions.alt = `reconstructions by ${method}`;
        caption.textContent = `${method} reconstructions of each patch's strongest activation`;
        remember({ method });
      },
    }), ` ${m}`)));
  const unitLink = (c, text) => (c === null ? null : el("a", { href: url("/unit", { report: key, layer, channel: c, method: params.get("method") }) }, text));
  const layerLink = (n, text) => (n === null ? null : el("a", { href: url("/unit", { report: key, layer: n.layer, channel: n.channel }) }, text));
  const others = data.covered_by.filter((r) => r.key !== key);
  put(page, 
    el("nav", { class: "steps" },
      el("a", { href: url("/layer", { report: key, layer, channel }) }, `← ${layer}`),
      unitLink(data.previous_unit, `‹ channel ${data.previous_unit}`), unitLink(data.next_unit, `channel ${data.next_unit} ›`),
      layerLink(data.previous_layer, `‹ ${data.previous_layer?.layer}`), layerLink(data.next_layer, `${data.next_layer?.layer} ›`),
      others.length ? el("a", { href: url("/compare", { layer, channel, a: key, b: others[0].key }) }, `compare with ${others[0].name}`) : null),
    el("h1", {}, `${layer} · channel ${channel}`),
    el("p", { class: "muted" }, `${report.name}: ${report.model_name}, top-${report.k} by ${report.by} over ${report.images_read.toLocaleString()} images of ${report.data}`),
    switcher,
    el("div", { class: "pair" },
      el("figure", { class: "grid" }, patches, el("figcaption", {}, "input patches under the receptive field, strongest first")),
      el("figure", { class: "grid" }, reconstructions, caption),
      optimised(key, layer, channel, data, params),
      el("figure", {}, histogram(data.histogram, data.winners.length || data.k),
        el("figcaption", {}, `classes of the top-${data.k} · purity ${Math.round(100 * data.purity)}%`)),
      data.filter ? el("figure", {}, img(url(`/api/report/${key}/filter.png`, here), `filter of channel ${channel}`, { lazy: false, cls: "pixelated", width: 96 }),
        el("figcaption", {}, "its filter")) : null,
    ),
    el("h2", {}, "Source images"),
    el("div", { class: "sources" }, data.winners.map((w) => el("figure", { class: "source" },
      el("a", { class: "frame", href: `/api/report/${key}/image/${w.index}.png` },
        img(`/api/report/${key}/image/${w.index}.png`, `image ${w.index}`, { lazy: false }), box(w.receptive_field, data.image_size)),
      el("figcaption", { title: w.path }, `#${w.rank} `, el("b", {}, w.label || "?"), ` ${format(w.value)}`,
        el("br"), w.location.length ? `at (${w.location.join(", ")})` : "whole image")))),
    data.covered_by.length > 1 ? [
      el("h2", {}, "In every report given (snapshots: its evolution)"),
      el("div", { class: "strip" }, data.covered_by.map((r) => el("figure", {},
        el("a", { href: url("/unit", { report: r.key, layer, channel }) }, img(url(`/api/report/${r.key}/tile.png`, { layer, channel }), `${r.name}`)),
        el("figcaption", {}, `${r.name} (${r.model_name})`)))),
    ] : null,
  );
  await ready(page);
}

/** Beside the top-k, the unit's optimised image (feature visualisation, Olah et al. 2017): the report's
 * own (zfclient top --visualise), else on demand, as it takes the server seconds. Once asked, it is in
 * the page's URL (visualise=steps). */
function optimised(key, layer, channel, data, params) {
  const steps = el("input", { type: "number", name: "steps", min: 1, value: params.get("visualise") || data.visualise_steps });
  const form = el("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); show(); } },
    el("button", { type: "submit", name: "visualise" }, data.optimised ? "optimise again" : "optimise an image"), el("label", {}, "steps", steps));
  const figure = el("figure", { class: "optimised" }, form,
    el("figcaption", {}, "an image made to excite this channel (feature visualisation)"));
  if (params.get("visualise")) show();
  else if (data.optimised) draw(url(`/api/report/${key}/optimised.png`, { layer, channel }), data.optimised, "from the report");
  return figure;

  function draw(src, found, source) {
    const picture = img(src, `optimised image of channel ${channel}`, { lazy: false });
    put(figure, picture, el("figcaption", {},
      el("b", {}, "optimised image"), ` ${source}`, el("br"),
      `${found.kind} objective ${format(found.objective)}; channel ${channel} ranks ${found.rank} of ${found.channels} on it`, el("br"),
      `${found.steps} steps, seed ${found.seed}; ${found.description}`), form);
    return picture;
  }

  async function show() {
    remember({ visualise: steps.value });
    const here = { layer, channel, steps: steps.value };
    put(figure, el("p", { class: "muted" }, `optimising an image for channel ${channel} (${steps.value} steps)…`));
    try {
      const found = await api(url(`/api/report/${key}/visualisation`, here));
      await loaded([draw(url(`/api/report/${key}/visualisation.png`, here), found, "by the server")]);
      document.body.dataset.visualised = `${layer}/${channel}`;
    } catch (error) {
      put(figure, form);
      fail(figure, error);
    }
  }
}

/** Keep the page's state in its URL (a reload or a shared link shows the same). */
function remember(changes) {
  const now = Object.fromEntries(new URLSearchParams(location.search));
  history.replaceState(null, "", url("/unit", { ...now, ...changes }));
}
