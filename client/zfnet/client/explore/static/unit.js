// Unit: one channel of a report: its top-k patches beside their reconstructions (deconvnet, guided or
// backprop), the source images with the receptive field outlined, the class make-up, a first layer's
// filter, the same unit in the other reports given (snapshots: its evolution), neighbours.
import { METHODS, api, box, el, format, histogram, img, put, ready, url } from "./main.js";

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
        history.replaceState(null, "", url("/unit", { ...here, method }));
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
