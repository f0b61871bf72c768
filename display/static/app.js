// Live emotions page: polls state.json and shows, per source, the annotated MJPEG stream and, per
// face, its track id, its (smoothed) label, one probability bar per label and a sparkline of the
// smoothed probabilities of its track over the last HISTORY_S seconds (kept here, from the polls).
// Everything from the server is inserted with textContent / DOM properties, never as HTML, so
// labels like "<script>" are shown as text.
"use strict";

const POLL_MS = 250;
const HISTORY_S = 30;
const SPARK_W = 200;
const SPARK_H = 36;
const HEX = /^#[0-9a-fA-F]{6}$/;
const sourcesEl = document.getElementById("sources");
const fpsEl = document.getElementById("fps");
const statusEl = document.getElementById("status");
const views = new Map(); // src -> {section, caption, faces}
const histories = new Map(); // src -> {seq, tracks: Map(track id -> [{ts, p}])}

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

function hasTrack(face) {
  return own(face, "track") && Number.isInteger(face.track);
}

// The smoothed view of a face when the display tracks it, else the raw one.
function shown(face) {
  const smoothed = own(face, "smoothed") && face.smoothed !== null && typeof face.smoothed === "object"
    && Object.keys(face.smoothed).length > 0;
  if (smoothed && typeof face.smoothed_label === "string") return { label: face.smoothed_label, probs: face.smoothed };
  return { label: face.label, probs: own(face, "probs") && face.probs !== null ? face.probs : {} };
}

function remember(s, faces) {
  const src = String(s.src);
  let h = histories.get(src);
  if (!h) {
    h = { seq: -1, tracks: new Map() };
    histories.set(src, h);
  }
  const ts = Number(s.ts);
  if (!Number.isFinite(ts) || s.seq === h.seq) return h;
  h.seq = s.seq;
  for (const f of faces) {
    if (!hasTrack(f)) continue;
    const points = h.tracks.get(f.track) || [];
    points.push({ ts, p: shown(f).probs });
    h.tracks.set(f.track, points);
  }
  for (const [id, points] of h.tracks) {
    while (points.length && points[0].ts < ts - HISTORY_S) points.shift();
    if (!points.length) h.tracks.delete(id);
  }
  return h;
}

function sparkline(points, labels, colours, current) {
  const canvas = el("canvas", "spark");
  canvas.width = SPARK_W;
  canvas.height = SPARK_H;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "smoothed emotion probabilities over the last " + HISTORY_S + " s");
  const ctx = canvas.getContext("2d");
  if (!ctx || points.length < 2) return canvas;
  const end = points[points.length - 1].ts;
  const span = Math.min(HISTORY_S, Math.max(5, end - points[0].ts)); // grows until the window is full
  const x = (ts) => SPARK_W * (1 - (end - ts) / span);
  const y = (p) => SPARK_H - 1 - (SPARK_H - 2) * Math.max(0, Math.min(1, Number(p) || 0));
  const order = labels.filter((n) => n !== current).concat(labels.includes(current) ? [current] : []);
  for (const name of order) {
    ctx.beginPath();
    points.forEach((pt, i) => {
      const v = own(pt.p, name) ? pt.p[name] : 0;
      if (i === 0) ctx.moveTo(x(pt.ts), y(v));
      else ctx.lineTo(x(pt.ts), y(v));
    });
    ctx.strokeStyle = colourOf(colours, name);
    ctx.lineWidth = name === current ? 2 : 1;
    ctx.globalAlpha = name === current ? 1 : 0.45;
    ctx.stroke();
  }
  return canvas;
}

function faceCard(face, index, labels, colours, history) {
  const card = el("article", "face");
  const head = el("header", "face-head");
  const view = shown(face);
  const label = el("span", "label", typeof view.label === "string" ? view.label : "?");
  label.style.backgroundColor = colourOf(colours, view.label);
  const probs = view.probs;
  const top = own(probs, view.label) ? Number(probs[view.label]) : 0;
  const id = hasTrack(face) ? "#" + face.track : "face " + (index + 1);
  head.append(el("span", "face-index", id), label, el("span", "score", (top * 100).toFixed(0) + "%"));
  card.append(head);
  for (const name of labels) {
    card.append(bar(String(name), own(probs, name) ? probs[name] : 0, colourOf(colours, name)));
  }
  if (hasTrack(face)) {
    card.dataset.track = String(face.track);
    card.append(sparkline(history.tracks.get(face.track) || [], labels.map(String), colours, view.label));
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
    const history = remember(s, faces);
    v.faces.replaceChildren(...faces.map((f, i) => faceCard(f, i, labels, s.colours, history)));
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
