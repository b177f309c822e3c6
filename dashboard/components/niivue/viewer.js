// The Streamlit component protocol by hand (no build step): announce readiness, receive
// "streamlit:render" with the args, report the frame height. Volumes are fetched by URL (the
// server's media files) once per volume; reruns with the same volumes change nothing here, so
// scrolling, clicking and windowing cost the server nothing.
"use strict";

const post = (type, data) =>
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
const $ = (id) => document.getElementById(id);
const DRAG = { crosshair: 8, windowing: 9, pan: 3 };

let nv = null;
let shown = null; // the volume key of what is loaded
let args = null;
const opacityOf = {}; // layer name -> opacity the user chose (kept when another subject loads)

function setHeight() {
  post("streamlit:setFrameHeight", { height: document.body.scrollHeight + 4 });
}

function setWindow(level, width) {
  const ct = nv.volumes[0];
  ct.cal_min = level - width / 2;
  ct.cal_max = level + width / 2;
  nv.updateGLVolume();
  markPreset();
}

function markPreset() {
  const ct = nv.volumes[0];
  const level = (ct.cal_min + ct.cal_max) / 2;
  const width = ct.cal_max - ct.cal_min;
  for (const b of document.querySelectorAll("#bar button[data-level]")) {
    const on = Math.abs(b.dataset.level - level) < 0.5 && Math.abs(b.dataset.width - width) < 0.5;
    b.classList.toggle("on", on);
  }
  $("status").textContent = `window: level ${level.toFixed(0)} HU, width ${width.toFixed(0)} HU` +
    ` · left click: crosshair · wheel: scroll slices · right drag: window/level` +
    ` · middle drag: pan · + / −: zoom` + (args.note ? ` · ${args.note}` : "");
}

function zoom(factor) {
  const p = nv.scene.pan2Dxyzmm;
  nv.setPan2Dxyzmm([p[0], p[1], p[2], factor === 0 ? 1 : p[3] * factor]);
  if (factor === 0) nv.setPan2Dxyzmm([0, 0, 0, 1]);
}

function toolbar() {
  const bar = $("bar");
  bar.textContent = "";
  const button = (text, title, onClick) => {
    const b = document.createElement("button");
    b.textContent = text;
    b.title = title;
    b.onclick = onClick;
    bar.appendChild(b);
    return b;
  };
  for (const [name, [level, width]] of Object.entries(args.presets)) {
    const b = button(name, `level ${level} HU, width ${width} HU`, () => setWindow(level, width));
    b.dataset.level = level;
    b.dataset.width = width;
  }
  button("+", "zoom in", () => zoom(1.25));
  button("−", "zoom out", () => zoom(0.8));
  button("reset", "zoom and pan back", () => zoom(0));
  args.layers.forEach((layer, i) => bar.appendChild(opacitySlider(layer, i + 1)));
}

function opacitySlider(layer, volume) {
  // in the browser: moving it redraws the planes without a server round trip
  const label = document.createElement("label");
  label.className = "opacity";
  label.textContent = `${layer} `;
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min: 0, max: 1, step: 0.05 });
  input.value = opacityOf[layer] ?? args.opacity;
  input.setAttribute("aria-label", `${layer} opacity`);
  input.title = `opacity of the ${layer} labels`;
  input.oninput = () => {
    opacityOf[layer] = Number(input.value);
    if (nv && nv.volumes[volume]) nv.setOpacity(volume, opacityOf[layer]);
  };
  label.appendChild(input);
  return label;
}

function name(value, layer) {
  // ``names``: one list per layer (a merged run's value is its merge, not its first member)
  if (value === undefined || value === null || Number.isNaN(value)) return "—";
  const k = Math.round(value);
  return k === 0 ? "background" : args.names[layer][k] || `label ${k}`;
}

function readout(loc) {
  // NiiVue's voxel is on the grid sent to the browser; ``stride`` maps it back to the
  // original grid (the server view's numbers); millimetres are world (RAS+) positions
  const vox = loc.vox.map((v, i) => Math.round(v) * args.stride[i]);
  const mm = Array.from(loc.mm).slice(0, 3).map((v) => v.toFixed(1));
  const values = loc.values.map((v) => v.value);
  const lines = [
    `HU ${Math.round(values[0])} · voxel (${vox.join(", ")}) · ` +
      `R ${mm[0]} A ${mm[1]} S ${mm[2]} mm`,
  ];
  const parts = args.layers.map((layer, i) => `${layer}: ${name(values[i + 1], i)}`);
  if (parts.length) lines.push(parts.join(" · "));
  $("readout").textContent = lines.join("\n");
  const labels = values.slice(1).map((v, i) => name(v, i));
  window.ctsegLocation = { vox, mm: loc.mm, hu: values[0], labels };
}

async function load() {
  const a = args;
  nv = nv || new niivue.Niivue({
    backColor: [0, 0, 0, 1],
    show3Dcrosshair: false,
    crosshairColor: [0.2, 0.85, 1, 1],
    isColorbar: false,
    dragAndDropEnabled: false,
    isRadiologicalConvention: true, // patient's right on screen left, as the server view
    sagittalNoseLeft: true, // anterior on the left, as the server view
    multiplanarShowRender: 0, // SHOW_RENDER.NEVER: three planes, no 3D tile
    multiplanarLayout: 3, // MULTIPLANAR_TYPE.ROW: side by side
    multiplanarEqualSize: true,
    mouseEventConfig: {
      leftButton: { primary: DRAG.crosshair, withShift: DRAG.windowing, withCtrl: DRAG.pan },
      rightButton: DRAG.windowing,
      centerButton: DRAG.pan,
    },
  });
  if (!nv._gl) await nv.attachToCanvas($("gl"));
  nv.onLocationChange = readout;
  const [level, width] = a.window;
  const list = [{ url: a.ct_url, name: "ct.nii", colormap: "gray",
                  cal_min: level - width / 2, cal_max: level + width / 2, trustCalMinMax: true }];
  a.label_urls.forEach((url, i) =>
    list.push({ url, name: "labels.nii", opacity: opacityOf[a.layers[i]] ?? a.opacity }));
  const started = performance.now();
  await nv.loadVolumes(list);
  for (let i = 1; i < nv.volumes.length; i++) {
    nv.volumes[i].setColormapLabel({ ...a.lut, labels: a.names[i - 1] });
  }
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.scene.crosshairPos = nv.vox2frac(a.start_vox);
  setWindow(level, width);
  nv.drawScene();
  nv.createOnLocationChange();
  window.ctsegLoadedMs = performance.now() - started;
}

async function render(newArgs) {
  args = newArgs;
  $("wrap").style.height = `${args.height}px`;
  if (shown !== args.volume_key) {
    shown = args.volume_key;
    toolbar();
    $("status").textContent = "loading volumes …";
    setHeight();
    try {
      await load();
      window.ctsegReady = true;
    } catch (err) {
      $("status").textContent = `could not show the volumes: ${err}`;
    }
  }
  setHeight();
}

window.addEventListener("message", (event) => {
  if (!event.data || event.data.type !== "streamlit:render") return;
  const theme = event.data.theme; // the page's colours (a dark theme needs light text)
  if (theme) document.body.style.color = theme.textColor;
  render(event.data.args);
});
post("streamlit:componentReady", { apiVersion: 1 });
