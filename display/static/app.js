// Live emotions page. Data: every frame's events record from /events (Server-Sent Events; the
// schema is docs/events.schema.json), and /state.json once a second for fps, the model's labels,
// their colours and the newest frame per source (also the fallback when the event stream is not
// available). Per source: the annotated MJPEG video scaled to the window; per face a card whose
// caption is the overlay's (caption() below is display/draw.py's caption(): the smoothed label and
// vector when the face is tracked, else the raw ones; the percentage is the shown label's own;
// an uncertain face says so); per track, kept across shots for the last HISTORY_S seconds, a
// timeline with a time axis and a live summary (dominant emotion and time shares since the page
// opened). Pause freezes what is shown; records keep arriving and are shown on resume.
// Everything from the server is inserted with textContent / DOM properties, never as HTML.
"use strict";

const STATE_MS = 1000;
const RENDER_MS = 200;
const HISTORY_S = 60;
const MAX_TIMELINES = 8;
const HEX = /^#[0-9a-fA-F]{6}$/;
const UNCERTAIN = "uncertain";
const UNCERTAIN_COLOUR = "#969696";
const sourcesEl = document.getElementById("sources");
const fpsEl = document.getElementById("fps");
const statusEl = document.getElementById("status");
const pauseEl = document.getElementById("pause");
const views = new Map(); // src -> view
const latest = new Map(); // src -> newest record
const histories = new Map(); // src -> {seq, tracks: Map(id -> track)}
let labelsOf = new Map(); // src -> labels
let colours = {};
let paused = false;
let lastEvent = 0;
let dirty = false;

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function own(obj, key) {
  return obj !== null && typeof obj === "object" && Object.prototype.hasOwnProperty.call(obj, key);
}

function colourOf(label) {
  if (label === UNCERTAIN) return UNCERTAIN_COLOUR;
  const c = own(colours, label) ? colours[label] : null;
  return typeof c === "string" && HEX.test(c) ? c : "#888888";
}

function num(x) {
  const v = Number(x);
  return Number.isFinite(v) ? v : 0;
}

function isObj(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

// One caption per face, as the overlay draws it (display/draw.py caption()).
function caption(face) {
  const track = own(face, "track") && Number.isInteger(face.track) ? face.track : null;
  const prefix = track === null ? "" : "#" + track + " ";
  const smoothed = isObj(face.smoothed) && Object.keys(face.smoothed).length > 0 && typeof face.smoothed_label === "string";
  const label = smoothed ? face.smoothed_label : face.label;
  const probs = smoothed ? face.smoothed : (isObj(face.probs) ? face.probs : {});
  if (typeof label !== "string" || Object.keys(probs).length === 0) {
    return { text: prefix + "face " + (num(face.score) * 100).toFixed(0) + "%", label: null, probs: {}, uncertain: false,
      smoothed: false, track, pct: 0 };
  }
  const values = Object.values(probs).map(num);
  const p = own(probs, label) ? num(probs[label]) : Math.max(...values);
  const uncertain = smoothed ? face.smoothed_uncertain === true : face.uncertain === true;
  const name = uncertain ? "uncertain (" + label + "?)" : label;
  return { text: prefix + name + " " + (100 * p).toFixed(0) + "%", label, name, probs, uncertain, smoothed, track, pct: p };
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
  const frozen = el("canvas", "stream frozen");
  frozen.hidden = true;
  const cap = el("figcaption", "caption", src);
  figure.append(img, frozen, cap);
  const side = el("div", "side");
  const facesTitle = el("h2", "panel-title", "Faces now");
  const faces = el("div", "faces");
  side.append(facesTitle, faces);
  const tl = el("div", "timelines");
  const tlHead = el("div", "timelines-head");
  const spanTitle = el("h2", "panel-title", "Tracks");
  tlHead.append(spanTitle, el("div", "legend"));
  const tlList = el("div", "timeline-list");
  tl.append(tlHead, tlList);
  section.append(figure, side, tl);
  sourcesEl.append(section);
  v = { section, img, frozen, cap, faces, legend: tlHead.lastChild, tlList, tracks: new Map(), legendKey: "", span: 10, spanTitle };
  views.set(src, v);
  return v;
}

function historyFor(src) {
  let h = histories.get(src);
  if (!h) {
    h = { seq: -1, tracks: new Map() };
    histories.set(src, h);
  }
  return h;
}

// Every record goes into the per-track history (kept across shots, pruned by age) and the summary.
function remember(rec) {
  const h = historyFor(String(rec.src));
  const ts = num(rec.ts);
  if (!Number.isInteger(rec.seq) || rec.seq === h.seq || ts <= 0) return;
  h.seq = rec.seq;
  for (const f of Array.isArray(rec.faces) ? rec.faces : []) {
    const c = caption(f);
    if (c.track === null || c.label === null) continue;
    let t = h.tracks.get(c.track);
    if (!t) {
      t = { id: c.track, points: [], counts: new Map(), frames: 0, first: ts, last: ts, smoothed: c.smoothed };
      h.tracks.set(c.track, t);
    }
    t.points.push({ ts, p: c.probs });
    const key = c.uncertain ? UNCERTAIN : c.label;
    t.counts.set(key, (t.counts.get(key) || 0) + 1);
    t.frames += 1;
    t.last = Math.max(t.last, ts);
    t.smoothed = c.smoothed;
  }
  const newest = Math.max(...[...h.tracks.values()].map((t) => t.last), ts);
  for (const [id, t] of h.tracks) {
    while (t.points.length && t.points[0].ts < newest - HISTORY_S) t.points.shift();
    if (!t.points.length) h.tracks.delete(id);
  }
}

function bar(label, p) {
  const row = el("div", "bar");
  row.dataset.label = label;
  const name = el("span", "bar-label", label);
  const track = el("span", "bar-track");
  const fill = el("span", "bar-fill");
  const pct = Math.max(0, Math.min(1, num(p))) * 100;
  fill.style.width = pct.toFixed(1) + "%";
  fill.style.backgroundColor = colourOf(label);
  track.append(fill);
  row.append(name, track, el("span", "bar-value", pct.toFixed(0) + "%"));
  return row;
}

function faceCard(face, index, labels) {
  const c = caption(face);
  const card = el("article", "face" + (c.uncertain ? " uncertain" : ""));
  card.dataset.caption = c.text;
  const head = el("header", "face-head");
  const id = c.track === null ? "face " + (index + 1) : "#" + c.track;
  const chip = el("span", "label", c.label === null ? "face" : c.name);
  chip.style.backgroundColor = c.uncertain ? "" : colourOf(c.label);
  head.append(el("span", "face-index", id), chip, el("span", "score", (100 * (c.label === null ? num(face.score) : c.pct)).toFixed(0) + "%"));
  card.append(head);
  if (c.label !== null) {
    card.append(el("div", "which", c.smoothed ? "smoothed over the track" : "this frame (raw)"));
    const names = labels.length ? labels : Object.keys(c.probs);
    for (const name of names) card.append(bar(String(name), own(c.probs, name) ? c.probs[name] : 0));
  }
  if (c.track !== null) card.dataset.track = String(c.track);
  return card;
}

function legend(v, labels) {
  const key = labels.join("\u0000") + JSON.stringify(colours);
  if (key === v.legendKey) return;
  v.legendKey = key;
  v.legend.replaceChildren(...labels.concat([UNCERTAIN]).map((name) => {
    const item = el("span", "legend-item");
    const sw = el("span", "swatch" + (name === UNCERTAIN ? " hatched" : ""));
    if (name !== UNCERTAIN) sw.style.backgroundColor = colourOf(name);
    item.append(sw, el("span", "", name));
    return item;
  }));
}

function shares(t) {
  return [...t.counts.entries()].sort((a, b) => b[1] - a[1]).map(([name, n]) => ({ name, share: n / t.frames }));
}

function timelineRow(v, t, labels, now, live) {
  let row = v.tracks.get(t.id);
  if (!row) {
    const box = el("div", "timeline");
    box.dataset.track = String(t.id);
    const head = el("div", "timeline-head");
    const title = el("span", "timeline-title");
    const summary = el("span", "summary");
    head.append(title, summary);
    const canvas = el("canvas", "plot");
    canvas.setAttribute("role", "img");
    const sharesBar = el("div", "shares");
    box.append(head, canvas, sharesBar);
    row = { box, title, summary, canvas, sharesBar };
    v.tracks.set(t.id, row);
  }
  const s = shares(t);
  const dominant = s.find((x) => x.name !== UNCERTAIN) || s[0];
  row.box.classList.toggle("gone", !live);
  row.title.textContent = "#" + t.id + (live ? "" : " · left " + Math.max(0, now - t.last).toFixed(0) + " s ago");
  const rest = s.filter((x) => x !== dominant).slice(0, 3);
  row.summary.textContent = (dominant ? "mostly " + dominant.name + " " + (100 * dominant.share).toFixed(0) + "%" : "")
    + rest.map((x) => " · " + x.name + " " + (100 * x.share).toFixed(0) + "%").join("")
    + " · " + t.frames + " frames";
  row.summary.dataset.dominant = dominant ? dominant.name : "";
  row.sharesBar.replaceChildren(...s.map((x) => {
    const seg = el("span", "share" + (x.name === UNCERTAIN ? " hatched" : ""));
    seg.style.width = (100 * x.share).toFixed(2) + "%";
    if (x.name !== UNCERTAIN) seg.style.backgroundColor = colourOf(x.name);
    seg.title = x.name + " " + (100 * x.share).toFixed(0) + "%";
    return seg;
  }));
  row.canvas.setAttribute("aria-label", "track " + t.id + ": " + (t.smoothed ? "smoothed" : "raw")
    + " emotion probabilities over the last " + HISTORY_S + " s");
  plot(row.canvas, t.points, labels, now, v.span);
  return row.box;
}

// Probabilities of each label over [now - span, now] (the span grows to HISTORY_S as the page
// collects history; the same for every track of a source): crisp (device pixels), time axis in s.
function plot(canvas, points, labels, now, span) {
  const dpr = window.devicePixelRatio || 1;
  const cssW = Math.max(120, canvas.clientWidth || 300);
  const cssH = Math.max(60, canvas.clientHeight || 90);
  if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
  }
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const left = 26, right = 6, top = 4, bottom = 16;
  const w = cssW - left - right, h = cssH - top - bottom;
  const x = (ts) => left + w * (1 - (now - ts) / span);
  const y = (p) => top + h * (1 - Math.max(0, Math.min(1, num(p))));
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = "#9a9a9a";
  ctx.strokeStyle = "#333";
  ctx.lineWidth = 1;
  for (const p of [0, 0.5, 1]) {
    ctx.beginPath();
    ctx.moveTo(left, y(p));
    ctx.lineTo(left + w, y(p));
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(String(p), left - 4, y(p));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const step = span <= 20 ? 5 : 10;
  for (let s = 0; s <= span + 0.01; s += step) {
    const xx = x(now - s);
    ctx.beginPath();
    ctx.moveTo(xx, top + h);
    ctx.lineTo(xx, top + h + 3);
    ctx.stroke();
    ctx.fillText(s === 0 ? "now" : "-" + s + " s", Math.min(left + w - 8, Math.max(left + 8, xx)), top + h + 4);
  }
  for (const name of labels) {
    ctx.beginPath();
    let prev = null;
    for (const pt of points) {
      const xx = x(pt.ts), yy = y(own(pt.p, name) ? pt.p[name] : 0);
      if (prev === null || pt.ts - prev > 1.0) ctx.moveTo(xx, yy); // a gap (the face was away): no line across
      else ctx.lineTo(xx, yy);
      prev = pt.ts;
    }
    ctx.strokeStyle = colourOf(name);
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }
}

function render() {
  dirty = false;
  if (paused) return;
  for (const [src, rec] of latest) {
    const v = viewFor(src);
    const faces = Array.isArray(rec.faces) ? rec.faces : [];
    const labels = (labelsOf.get(src) || []).map(String);
    v.cap.textContent = src + " · frame " + rec.seq + " · " + faces.length + " face(s) · "
      + num(rec.latency_ms).toFixed(0) + " ms";
    v.faces.replaceChildren(...faces.map((f, i) => faceCard(f, i, labels)));
    legend(v, labels);
    const h = historyFor(src);
    const now = num(rec.ts);
    const liveIds = new Set(faces.map((f) => f.track));
    const tracks = [...h.tracks.values()].sort((a, b) => b.last - a.last).slice(0, MAX_TIMELINES);
    const oldest = Math.min(now, ...tracks.map((t) => (t.points.length ? t.points[0].ts : now)));
    v.span = Math.min(HISTORY_S, Math.max(10, Math.ceil((now - oldest) / 10) * 10));
    v.spanTitle.textContent = "Tracks, last " + v.span + " s";
    for (const id of [...v.tracks.keys()]) if (!tracks.some((t) => t.id === id)) v.tracks.delete(id);
    v.tlList.replaceChildren(...tracks.map((t) => timelineRow(v, t, labels, now, liveIds.has(t.id))));
  }
}

function schedule() {
  if (!dirty) {
    dirty = true;
    setTimeout(render, RENDER_MS);
  }
}

function take(rec) {
  if (!isObj(rec) || typeof rec.src !== "string") return;
  remember(rec);
  const shown = latest.get(rec.src);
  if (!shown || rec.seq > shown.seq || shown.seq - rec.seq > 256) latest.set(rec.src, rec);
  schedule();
}

function connect() {
  if (typeof EventSource !== "function") return;
  const es = new EventSource("events");
  es.onmessage = (e) => {
    lastEvent = performance.now();
    try {
      take(JSON.parse(e.data));
    } catch (err) {
      statusEl.textContent = "bad event: " + err.message;
    }
  };
}

async function poll() {
  try {
    const r = await fetch("state.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const state = await r.json();
    fpsEl.textContent = num(state.fps).toFixed(1) + " fps";
    for (const s of Array.isArray(state.sources) ? state.sources : []) {
      if (Array.isArray(s.labels)) labelsOf.set(String(s.src), s.labels);
      if (isObj(s.colours)) colours = Object.assign({}, colours, s.colours);
      if (performance.now() - lastEvent > 2 * STATE_MS) take(s); // no event stream: the polled frame
    }
    statusEl.textContent = latest.size ? "" : "waiting for frames…";
    schedule();
  } catch (e) {
    statusEl.textContent = "pipeline not reachable (" + e.message + ")";
  } finally {
    setTimeout(poll, STATE_MS);
  }
}

function setPaused(p) {
  paused = p;
  pauseEl.textContent = p ? "Resume" : "Pause";
  pauseEl.setAttribute("aria-pressed", String(p));
  document.body.classList.toggle("paused", p);
  for (const [src, v] of views) {
    if (p && v.img.naturalWidth > 0) { // keep the frame on screen, free the stream
      v.frozen.width = v.img.naturalWidth;
      v.frozen.height = v.img.naturalHeight;
      const ctx = v.frozen.getContext("2d");
      if (ctx) ctx.drawImage(v.img, 0, 0);
      v.frozen.hidden = false;
      v.img.hidden = true;
      v.img.removeAttribute("src");
    } else if (!p) {
      v.img.src = "stream.mjpg?src=" + encodeURIComponent(src);
      v.img.hidden = false;
      v.frozen.hidden = true;
    }
  }
  if (!p) schedule();
}

pauseEl.addEventListener("click", () => setPaused(!paused));
connect();
poll();
