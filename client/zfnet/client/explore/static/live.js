// Live: drop or pick an image; its top-5, a layer's feature maps as one sheet; click a map for that
// unit's reconstructions by the three methods, then, on demand, its occlusion maps (Fig. 7) and the
// image's invariance curves (Fig. 5).
import { METHODS, api, box, el, fail, format, img, loaded, put, ready, url } from "./main.js";

export async function show(page) {
  const model = await api("/api/model");
  document.title = `live · ${model.name} · zfnet explorer`;
  const layers = model.layers.filter((l) => l.shape.length >= 2);
  const initial = (layers.find((l) => l.number === 5) || [...layers].reverse().find((l) => l.shape.length === 4) || layers[0]).name;
  const picker = el("input", { type: "file", accept: "image/*", onchange: (e) => e.target.files[0] && take(e.target.files[0]) });
  const drop = el("div", { class: "drop" }, el("b", {}, "Drop an image here"), " or pick one: ", picker,
    el("div", { class: "muted" }, `it is resized to the model's input, ${model.input_shape[2]}×${model.input_shape[3]}`));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) take(e.dataTransfer.files[0]); });
  const result = el("div", {});
  put(page, el("h1", {}, `Live: ${model.name}`), drop, result);
  await ready(page);

  async function take(file) {
    performance.clearMarks();
    performance.mark("zf-drop");
    put(result, el("p", { class: "muted" }, `reading ${file.name}…`));
    try {
      const upload = await api(url("/api/live", { name: file.name }), { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
      await showUpload(result, upload, model, layers, initial);
    } catch (error) {
      put(result, );
      fail(result, error);
    }
  }
}

async function showUpload(result, upload, model, layers, initial) {
  const key = upload.key;
  const layerSelect = el("select", { name: "layer", onchange: () => showMaps(layerSelect.value) },
    layers.map((l) => el("option", { value: l.name, selected: l.name === initial }, `${l.name}${l.number ? ` (layer ${l.number})` : ""}`)));
  const maps = el("div", {});
  put(result, el("div", { class: "live" },
    el("figure", { class: "input" }, img(`/api/live/${key}/input.png`, upload.name, { lazy: false }), el("figcaption", {}, `${upload.name}, as the model sees it`)),
    el("div", {}, el("h2", {}, "Top-5"), el("table", {}, upload.top.map((s) => el("tr", {},
      el("td", {}, s.label), el("td", { class: "num" }, `${(100 * s.probability).toFixed(1)}%`),
      el("td", {}, el("span", { class: "hist" }, el("span", { class: "bar", style: `display:block;width:${150 * s.probability}px` })))))))),
    el("h2", {}, "Feature maps of ", layerSelect), maps);
  await showMaps(initial);

  async function showMaps(layer) {
    put(maps, el("p", { class: "muted" }, "…"));
    const sheet = await api(url(`/api/live/${key}/maps`, { layer }));
    const picture = img(url(`/api/live/${key}/maps.png`, { layer }), `feature maps of ${layer}`, { lazy: false });
    const pick = el("span", { class: "pick", hidden: true });
    const unit = el("div", {});
    const frame = el("div", { class: "maps", title: "click a map" }, picture, pick);
    frame.addEventListener("click", (e) => {
      const scale = picture.naturalWidth / picture.clientWidth;
      const [h, w] = sheet.cell;
      const column = Math.floor((e.offsetX * scale) / (w + sheet.gap)), row = Math.floor((e.offsetY * scale) / (h + sheet.gap));
      const channel = row * sheet.columns + column;
      if (column < sheet.columns && channel < sheet.channels) choose(channel);
    });
    put(maps, el("p", { class: "muted" }, `${sheet.channels} maps, each scaled to its own range; the strongest is channel ${sheet.strongest}. Click a map.`), frame, unit);

    async function choose(channel) {
      const scale = picture.clientWidth / picture.naturalWidth;
      const [h, w] = sheet.cell;
      Object.assign(pick.style, {
        left: `${(channel % sheet.columns) * (w + sheet.gap) * scale - 2}px`, top: `${Math.floor(channel / sheet.columns) * (h + sheet.gap) * scale - 2}px`,
        width: `${w * scale + 4}px`, height: `${h * scale + 4}px`,
      });
      pick.hidden = false;
      await showUnit(unit, key, layer, channel, sheet.maxima[channel], model, upload);
    }
    await loaded([picture]);
    await choose(sheet.strongest);
  }
}

async function showUnit(where, key, layer, channel, maximum, model, upload) {
  put(where, el("p", { class: "muted" }, `reconstructing channel ${channel}…`));
  const data = await api(url(`/api/live/${key}/unit`, { layer, channel }));
  const here = { layer, channel };
  const pictures = METHODS.map((m) => img(url(`/api/live/${key}/reconstruction.png`, { ...here, method: m }), `${m} reconstruction`, { lazy: false }));
  const classes = el("select", { name: "class" }, el("option", { value: "" }, `top-1 (${upload.top[0].label})`),
    model.classes.map((c) => el("option", { value: c }, c)));
  const extra = el("div", {});
  const figure = (src, alt, note) => {
    const picture = img(src, alt, { lazy: false });
    put(extra, el("p", { class: "muted" }, note), el("figure", { class: "figure" }, picture));
    loaded([picture]).then(() => extra.firstChild.remove());
  };
  put(where, 
    el("h2", {}, `${layer} · channel ${channel}`),
    el("p", { class: "muted" }, `strongest activation ${format(maximum)} at (${data.methods.deconvnet.location.join(", ")}); its receptive field outlined`),
    el("div", { class: "pair" }, METHODS.map((m, i) => el("figure", {},
      el("div", { class: "recon" }, pictures[i], box(data.methods[m].receptive_field, data.size)), el("figcaption", {}, m)))),
    el("form", { class: "controls", onsubmit: (e) => e.preventDefault() },
      el("label", {}, "true class", classes),
      el("button", { type: "button", name: "occlusion", onclick: () => figure(url(`/api/live/${key}/occlusion.png`, { ...here, class: classes.value }),
        "occlusion maps", "sliding a grey square over the image…") }, "occlusion maps (Fig. 7)"),
      el("button", { type: "button", name: "invariance", onclick: () => figure(url(`/api/live/${key}/invariance.png`, { class: classes.value }),
        "invariance curves", "shifting, scaling and rotating the image…") }, "invariance curves (Fig. 5)")),
    extra,
  );
  await loaded(pictures);
  performance.mark("zf-live-ready");
  document.body.dataset.live = `${layer}/${channel}`;
}
