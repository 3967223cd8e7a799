// Compare: two reports (two snapshots, two models with the same layer names, or one report by two
// methods) side by side at the same unit.
import { METHODS, api, el, histogram, img, put, ready, url } from "./main.js";

export async function show(page, params) {
  const model = await api("/api/model");
  const reports = Object.fromEntries(model.reports.map((r) => [r.key, r]));
  const keys = Object.keys(reports);
  if (!keys.length) {
    put(page, el("h1", {}, "Compare"), el("p", { class: "muted" }, "No report given: start zfclient explore with --report DIR (twice to compare two)."));
    return ready(page);
  }
  const a = reports[params.get("a")] ? params.get("a") : keys[0];
  const b = reports[params.get("b")] ? params.get("b") : keys[Math.min(1, keys.length - 1)];
  const ma = params.get("ma") || reports[a].method;
  const mb = params.get("mb") || (a === b ? METHODS.find((m) => m !== ma) : reports[b].method);
  const layers = Object.keys(reports[a].layers).filter((l) => l in reports[b].layers);
  if (!layers.length) throw new Error(`${reports[a].name} and ${reports[b].name} cover no layer of the same name`);
  const layer = layers.includes(params.get("layer")) ? params.get("layer") : layers[0];
  const channel = Number(params.get("channel") || 0);
  const state = { layer, channel, a, b, ma, mb };
  const go = (changes) => location.assign(url("/compare", { ...state, ...changes }));
  const select = (name, options, value) => el("select", { name, onchange: (e) => go({ [name]: e.target.value }) },
    options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
  const reportOptions = keys.map((k) => [k, `${reports[k].name} (${reports[k].model_name})`]);
  const methodOptions = METHODS.map((m) => [m, m]);
  document.title = `compare ${layer} channel ${channel} · zfnet explorer`;
  put(page, 
    el("h1", {}, `Compare ${layer} · channel ${channel}`),
    el("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); go({ channel: e.target.channel.value }); } },
      el("label", {}, "layer", select("layer", layers.map((l) => [l, l]), layer)),
      el("label", {}, "channel", el("input", { type: "number", name: "channel", min: 0, value: channel }), el("button", { type: "submit" }, "show")),
      el("label", {}, "left", select("a", reportOptions, a), select("ma", methodOptions, ma)),
      el("label", {}, "right", select("b", reportOptions, b), select("mb", methodOptions, mb))),
    el("div", { class: "columns" }, await side(reports[a], ma, layer, channel), await side(reports[b], mb, layer, channel)),
  );
  await ready(page);
}

async function side(report, method, layer, channel) {
  const here = { layer, channel };
  const column = el("section", {}, el("h2", {}, `${report.name} · ${method}`),
    el("p", { class: "muted" }, `${report.model_name}, top-${report.k} over ${report.images_read.toLocaleString()} images of ${report.data}`));
  try {
    const unit = await api(url(`/api/report/${report.key}/unit`, here));
    column.append(
      el("div", { class: "pair" },
        el("figure", { class: "grid" }, img(url(`/api/report/${report.key}/patches.png`, here), "input patches", { lazy: false }), el("figcaption", {}, "patches")),
        el("figure", { class: "grid" }, img(url(`/api/report/${report.key}/reconstructions.png`, { ...here, method }), `reconstructions by ${method}`, { lazy: false }),
          el("figcaption", {}, `${method} reconstructions`))),
      histogram(unit.histogram, unit.winners.length || unit.k),
      el("p", {}, el("a", { href: url("/unit", { report: report.key, ...here, method }) }, "open the unit")),
    );
  } catch (error) {
    column.append(el("p", { class: "error" }, error.message));
  }
  return column;
}
