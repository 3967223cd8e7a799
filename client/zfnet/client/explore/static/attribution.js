// Attributions of the Live page's image, on demand: a method (Grad-CAM, Grad-CAM++, integrated
// gradients, SmoothGrad, SmoothGrad-squared, input x gradient) with its parameters, explaining the
// top-1 class, a chosen class or the chosen unit; each answer overlaid on the image, labelled, with
// its colour bar. The form is drawn from the methods the server's client offers (/api/model).
import { api, el, fail, format, img, loaded, put, url } from "./main.js";

/** The attribution form and its answers for the uploaded image `key`; `layer`/`channel` is the unit chosen on the page. */
export function attributionView(key, layer, channel, model, upload) {
  const methods = model.attributions;
  const spatial = model.layers.filter((l) => l.shape.length === 4).map((l) => l.name);
  const method = el("select", { name: "attribution", onchange: () => drawParameters() },
    Object.entries(methods).map(([name, m]) => el("option", { value: name }, m.title)));
  const target = el("select", { name: "target" },
    el("option", { value: "" }, `top-1 class (${upload.top[0].label})`),
    el("option", { value: "unit" }, `${layer} channel ${channel}`),
    model.classes.map((c) => el("option", { value: `class:${c}` }, `class ${c}`)));
  const parameters = el("span", { class: "parameters" });
  const answers = el("div", { class: "attributions" });
  const form = el("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); attribute(); } },
    el("label", {}, "method", method), el("label", {}, "explain", target), parameters,
    el("button", { type: "submit", name: "attribute" }, "attribute"));
  drawParameters();
  return el("section", { class: "attribute" }, el("h2", {}, "Attributions"), form, answers);

  function drawParameters() {
    const chosen = methods[method.value];
    put(parameters, Object.entries(chosen.defaults).map(([name, value]) => el("label", {}, name, field(name, value, chosen.choices[name]))));
  }

  function field(name, value, choices) {
    if (name === "layer") {  // Grad-CAM's layer: the page's layer where it has maps, else the server's choice (the last convolution)
      return el("select", { name }, el("option", { value: "" }, "last convolution"),
        spatial.map((l) => el("option", { value: l, selected: l === layer }, l)));
    }
    if (choices) return el("select", { name }, choices.map((c) => el("option", { value: c, selected: c === value }, c)));
    return el("input", { type: "number", name, value, min: 0, step: Number.isInteger(value) ? 1 : "any" });
  }

  async function attribute() {
    const asked = { method: method.value };
    if (target.value === "unit") Object.assign(asked, { target_layer: layer, unit: channel });
    else if (target.value) asked.unit = target.value.slice("class:".length);
    for (const input of parameters.querySelectorAll("select, input")) asked[input.name] = input.value;
    const note = el("div", { class: "attribution muted" }, `${methods[asked.method].title}…`);
    answers.prepend(note);
    try {
      const found = await api(url(`/api/live/${key}/attribution`, asked));
      const picture = img(url(`/api/live/${key}/attribution.png`, asked), `${found.title} of ${found.target}`, { lazy: false });
      note.replaceWith(answer(found, picture));
      await loaded([picture]);
      document.body.dataset.attribution = asked.method;
    } catch (error) {
      put(note);
      fail(note, error);
    }
  }
}

function answer(found, picture) {
  const scale = found.scale;
  return el("figure", { class: "attribution" }, el("div", { class: "overlay" }, picture),
    el("figcaption", {},
      el("b", {}, found.layer ? `${found.title} of ${found.layer}` : found.title), el("br"),
      `explaining ${found.target} at ${found.target_layer} = ${format(found.value, 4)}`, el("br"),
      found.description,
      found.method === "integrated-gradients" ? [el("br"), `convergence delta ${format(found.delta)}`] : null,
      found.sigma ? [el("br"), `noise sigma ${format(found.sigma)}`] : null,
      el("div", { class: "colourbar", style: `background:linear-gradient(to right, ${scale.colours.join(", ")})` }),
      el("div", { class: "scale" }, el("span", {}, format(scale.low)), el("span", {}, scale.label), el("span", {}, format(scale.high)))));
}
