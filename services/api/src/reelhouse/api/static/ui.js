// Small DOM helpers and formatters shared by the views (no framework).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  for (const child of children) el.append(child);
  return el;
}

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit > 0 ? 1 : 0)} ${units[unit]}`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  const total = Math.round(Number(ms) / 1000);
  const hh = Math.floor(total / 3600);
  const mm = Math.floor((total % 3600) / 60);
  const ss = total % 60;
  const pad = (v) => String(v).padStart(2, "0");
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${mm}:${pad(ss)}`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function kbits(value) {
  const n = Number(value);
  return Number.isFinite(n) && n > 0 ? `${n.toLocaleString()} kbit/s` : "–";
}

// A state badge: running, retrying (with its reason), failed, stopped, starting, stopping...
export function badge(state, reason) {
  return h(
    "span",
    { class: `badge badge-${state}`, title: reason || state, dataset: { state } },
    state,
    reason ? h("small", { class: "badge-reason" }, ` – ${reason}`) : null,
  );
}

// A sparkline of the last values (bitrate over the last minutes); empty when nothing yet.
// `what` and `unit` name the values for screen readers; `kind` adds a class (its colour).
export function sparkline(values, { width = 120, height = 28, what = "bitrate", unit = "kbit/s", kind = "" } = {}) {
  const box = svg("svg", { class: `sparkline${kind ? ` sparkline-${kind}` : ""}`, width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  if (values.length < 2) return box;
  const max = Math.max(...values) > 0 ? Math.max(...values) : 1;
  const step = width / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  box.append(svg("polyline", { points: points.join(" "), fill: "none", "stroke-width": "1.5" }));
  box.setAttribute("aria-label", `${what}, last ${values.length} samples, peak ${max < 10 ? max.toFixed(2) : Math.round(max)} ${unit}`);
  return box;
}

export function table(headers, rows, { empty = "Nothing here yet.", testid } = {}) {
  if (!rows.length) return h("p", { class: "muted empty", dataset: testid ? { testid } : undefined }, empty);
  return h(
    "table",
    { dataset: testid ? { testid } : undefined },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows),
  );
}

export function button(label, onclick, attrs = {}) {
  return h("button", { type: "button", onclick, ...attrs }, label);
}

// Runs an action, showing its error (the API's message) in the page's notice bar.
export async function act(fn) {
  try {
    return await fn();
  } catch (err) {
    notice(err.message, "error");
    return undefined;
  }
}

export function notice(message, kind = "info") {
  const bar = document.getElementById("notice");
  if (!bar) return;
  bar.textContent = message;
  bar.className = `notice notice-${kind}`;
  bar.hidden = !message;
}
