// Live emotions page: polls state.json and shows, per source, the annotated MJPEG stream and, per
// face, its label and one probability bar per label. Everything from the server is inserted with
// textContent / DOM properties, never as HTML, so labels like "<script>" are shown as text.
"use strict";

const POLL_MS = 250;
const HEX = /^#[0-9a-fA-F]{6}$/;
const sourcesEl = document.getElementById("sources");
const fpsEl = document.getElementById("fps");
const statusEl = document.getElementById("status");
const views = new Map(); // src -> {section, caption, faces}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function own(obj, key) {
  return obj !== null && typeof obj === "object" && Object.prototype.hasOwnProperty.call(obj, key);
}

function colourOf(colours, label) {
  const c = own(colours, label) ? colours[label] : null;
  return typeof c === "string" && HEX.test(c) ? c : "#888888";
}

function viewFor(src) {
  let v = views.get(src);
  if (v) return v;
  const section = el("section", "source");
  section.dataset.src = src;
  const figure = el("figure", "video");
  const img = el("img", "stream");
  img.alt = "annotated live video of " + src;
  img.src = "stream.mjpg?src=" + encodeURIComponent(src);
  const caption = el("figcaption", "caption", src);
  figure.append(img, caption);
  const faces = el("div", "faces");
  section.append(figure, faces);
  sourcesEl.append(section);
  v = { section, caption, faces };
  views.set(src, v);
  return v;
}

function bar(label, p, colour) {
  const row = el("div", "bar");
  row.dataset.label = label;
  const name = el("span", "bar-label", label);
  const track = el("span", "bar-track");
  const fill = el("span", "bar-fill");
  const pct = Math.max(0, Math.min(1, Number(p) || 0)) * 100;
  fill.style.width = pct.toFixed(1) + "%";
  fill.style.backgroundColor = colour;
  track.append(fill);
  const value = el("span", "bar-value", pct.toFixed(0) + "%");
  row.append(name, track, value);
  return row;
}

function faceCard(face, index, labels, colours) {
  const card = el("article", "face");
  const head = el("header", "face-head");
  const label = el("span", "label", typeof face.label === "string" ? face.label : "?");
  label.style.backgroundColor = colourOf(colours, face.label);
  const probs = own(face, "probs") ? face.probs : {};
  const top = own(probs, face.label) ? Number(probs[face.label]) : 0;
  head.append(el("span", "face-index", "#" + (index + 1)), label, el("span", "score", (top * 100).toFixed(0) + "%"));
  card.append(head);
  for (const name of labels) {
    card.append(bar(String(name), own(probs, name) ? probs[name] : 0, colourOf(colours, name)));
  }
  return card;
}

function render(state) {
  fpsEl.textContent = Number(state.fps || 0).toFixed(1) + " fps";
  for (const s of Array.isArray(state.sources) ? state.sources : []) {
    const v = viewFor(String(s.src));
    const faces = Array.isArray(s.faces) ? s.faces : [];
    const labels = Array.isArray(s.labels) ? s.labels : [];
    v.caption.textContent = s.src + " · frame " + s.seq + " · " + faces.length + " face(s) · "
      + Number(s.latency_ms || 0).toFixed(0) + " ms";
    v.faces.replaceChildren(...faces.map((f, i) => faceCard(f, i, labels, s.colours)));
  }
}

async function tick() {
  try {
    const r = await fetch("state.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    statusEl.textContent = views.size ? "" : "waiting for frames…";
  } catch (e) {
    statusEl.textContent = "pipeline not reachable (" + e.message + ")";
  } finally {
    setTimeout(tick, POLL_MS);
  }
}

tick();
