// Layer: a report's channels of one layer as tiles (strongest patch and its reconstruction), lazy and
// paged; jump to a channel, keep channels whose top-k is mostly one class, sort by strength or purity.
import { api, el, format, img, put, ready, url } from "./main.js";

const SORTS = { channel: "channel number", value: "strongest activation", purity: "class purity" };
const SHARES = ["0.5", "0.7", "0.9", "1"];

export async function show(page, params) {
  const key = params.get("report"), layer = params.get("layer");
  const state = { report: key, layer, sort: params.get("sort") || "channel", class: params.get("class") || "", share: params.get("share") || "0.5" };
  const jumped = params.get("channel");
  const data = await api(url(`/api/report/${key}/channels`, { ...state, page: params.get("page") || 1, channel: jumped }));
  const report = data.report;
  document.title = `${layer} · ${report.name} · zfnet explorer`;
  const go = (changes) => location.assign(url("/layer", { ...state, ...changes }));
  const select = (name, options, value) => el("select", { name, onchange: (e) => go({ [name]: e.target.value, channel: null }) },
    Object.entries(options).map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
  const jump = el("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); go({ channel: e.target.channel.value }); } },
    el("label", {}, "channel", el("input", { type: "number", name: "channel", min: 0, max: data.channels - 1, value: jumped ?? "", required: true })),
    el("button", { type: "submit" }, "jump"),
    el("label", {}, "sort by", select("sort", SORTS, state.sort)),
    el("label", {}, "top-k mostly", select("class", Object.fromEntries([["", "any class"], ...data.classes.map((c) => [c, c])]), state.class)),
    state.class ? el("label", {}, "at least", select("share", Object.fromEntries(SHARES.map((s) => [s, `${s * 100}%`])), state.share)) : null,
  );
  const tiles = data.units.map((unit, i) => el("a", {
    href: url("/unit", { report: key, layer, channel: unit.channel }), class: String(unit.channel) === jumped ? "jumped" : null, id: `ch${unit.channel}`,
  },
    img(url(`/api/report/${key}/tile.png`, { layer, channel: unit.channel }), `channel ${unit.channel}`, { width: 130, height: 64, lazy: i >= 12 }),
    el("div", {}, el("b", {}, `${unit.channel}`), ` · ${format(unit.value)}`),
    el("div", { class: "classes" }, unit.histogram.map(([label, count]) => `${label} ${count}`).join(", ") || "no image"),
  ));
  const pager = () => el("div", { class: "pager" },
    data.page > 1 ? el("a", { href: url("/layer", { ...state, page: data.page - 1 }) }, "‹ previous") : null,
    el("span", {}, `page ${data.page} of ${data.pages} · channels ${data.total ? data.first + 1 : 0}–${data.first + data.units.length} of ${data.total}`
      + (data.total < data.channels ? ` (of ${data.channels} in the layer)` : "")),
    data.page < data.pages ? el("a", { href: url("/layer", { ...state, page: data.page + 1 }) }, "next ›") : null,
  );
  put(page, 
    el("nav", { class: "steps" }, el("a", { href: "/" }, "← model"),
      data.previous_layer ? el("a", { href: url("/layer", { report: key, layer: data.previous_layer }) }, `‹ ${data.previous_layer}`) : null,
      data.next_layer ? el("a", { href: url("/layer", { report: key, layer: data.next_layer }) }, `${data.next_layer} ›`) : null),
    el("h1", {}, `${layer}: ${data.channels} channels`),
    el("p", { class: "muted" }, `${report.name}: ${report.model_name}, top-${report.k} by ${report.by} over ${report.images_read.toLocaleString()} images of ${report.data}; `
      + `a tile is a channel's strongest patch beside its ${report.method} reconstruction`),
    jump, pager(), el("div", { class: "tiles" }, tiles), pager(),
  );
  if (jumped) document.getElementById(`ch${jumped}`)?.scrollIntoView({ block: "center" });
  await ready(page);
}
