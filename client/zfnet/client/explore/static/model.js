// Model: the layer table with receptive fields, the reports and the layers each covers, the first
// layer's filters, the classes.
import { api, el, img, put, ready, shape, url } from "./main.js";

export async function show(page) {
  const model = await api("/api/model");
  document.title = `${model.name} · zfnet explorer`;
  const reports = model.reports;
  const layerLink = (report, layer) => el("a", { href: url("/layer", { report: report.key, layer }) }, layer);
  const rows = model.layers.map((layer) => el("tr", {},
    el("td", { class: "num" }, layer.index), el("td", {}, layer.name), el("td", {}, layer.op), el("td", {}, shape(layer.shape)),
    el("td", { class: "num" }, layer.number || ""), el("td", { id: `field-${layer.index}`, class: "num muted" }, "…"),
    reports.map((report) => el("td", {}, report.layers[layer.name] ? layerLink(report, layer.name) : "")),
  ));
  put(page, 
    el("h1", {}, model.name),
    el("p", { class: "muted" },
      `input ${shape(model.input_shape)} · ${model.layers.length} layers · ${model.classes.length} classes · sha256 ${model.sha256.slice(0, 12)} · ${model.provider}`),
    el("h2", {}, "Reports"),
    reports.length ? el("table", {},
      el("tr", {}, ["report", "model", "data", "images", "top-k", "reconstruction", "layers"].map((h) => el("th", {}, h))),
      reports.map((r) => el("tr", {},
        el("td", {}, r.name), el("td", {}, r.model_name), el("td", {}, r.data), el("td", { class: "num" }, r.images_read.toLocaleString()),
        el("td", {}, `top-${r.k} by ${r.by}`), el("td", {}, r.method),
        el("td", {}, Object.keys(r.layers).flatMap((layer, i) => [i ? ", " : "", layerLink(r, layer)])))),
    ) : el("p", { class: "muted" }, "No report given: zfclient top … --out DIR makes one; zfclient explore --report DIR shows it. The Live page needs none."),
    el("h2", {}, "Layers"),
    el("table", { class: "layers" },
      el("tr", {}, ["#", "name", "op", "shape", "layer", "receptive field", reports.map((r) => r.name)].flat().map((h) => el("th", {}, h))),
      rows),
    model.first_layer ? [
      el("h2", {}, `First layer's filters (${model.first_layer})`),
      el("figure", {}, img(`/api/model/${model.sha256}/filters.png`, `filters of ${model.first_layer}`, { lazy: false, cls: "pixelated" }),
        el("figcaption", {}, "one RGB tile per output channel, scaled to [0, 1] over the whole sheet")),
    ] : null,
    el("h2", {}, "Classes"),
    el("p", {}, model.classes.length ? model.classes.join(", ") : "the model names none"),
  );
  await ready(page);
  fields(model);
}

/** Fill the receptive-field column: exact where a report covers the layer, else measured on a probe image. */
async function fields(model) {
  const found = await api("/api/model/fields");
  for (const layer of model.layers) {
    const cell = document.getElementById(`field-${layer.index}`);
    const field = found[layer.name];
    cell.classList.toggle("muted", !field);
    cell.textContent = !field ? "–" : field.whole ? "whole input" : `${field.exact ? "" : "≥ "}${field.size[0]}×${field.size[1]}`;
    cell.title = !field ? "the server cannot project this layer" : field.exact ? "input pixels that can affect one unit" : "clipped to the input: at least this";
  }
  document.body.dataset.fields = "1";
}
