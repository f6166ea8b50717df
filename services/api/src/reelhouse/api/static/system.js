// System: the service nodes (/api/nodes/getAll), the storage gauge (/api/storage/getInfo) and
// the events feed (changes this page has seen while polling, and the ingest events the events
// WebSocket delivers).
import { call } from "./api.js";
import { badge, bytes, h, table, when } from "./ui.js";

export function feedList(store, { limit = 200 } = {}) {
  const items = store.feed.slice(0, limit);
  if (!items.length) return h("p", { class: "muted empty" }, "Nothing happened since this page opened.");
  return h("ol", { class: "feed", dataset: { testid: "events-feed" } }, items.map((e) => h(
    "li", { class: `feed-${e.kind}` },
    h("time", { datetime: e.at.toISOString() }, e.at.toLocaleTimeString()), " ",
    h("strong", {}, e.subject), " ", e.text,
  )));
}

function gauge(info) {
  const pct = info.total ? (100 * info.used) / info.total : 0;
  const level = pct >= 95 ? "critical" : pct >= 85 ? "warning" : "ok";
  return h("div", { class: "gauge-box", dataset: { testid: "storage-gauge" } },
    h("meter", { min: 0, max: 100, low: 85, high: 95, optimum: 0, value: pct.toFixed(1), class: `gauge gauge-${level}` }),
    h("p", {}, h("strong", {}, `${pct.toFixed(1)} % used`),
      ` · ${bytes(info.used)} of ${bytes(info.total)} · ${bytes(info.free)} free`),
    info.archive?.files ? h("p", { class: "muted" }, `Archive: ${info.archive.files} files, ${bytes(info.archive.bytes)}`) : null);
}

export function systemView(store) {
  const nodes = h("div", {});
  const storage = h("div", {});
  const feed = h("div", {});
  const el = h("section", { class: "view", dataset: { testid: "system-view" } },
    h("h2", {}, "System"),
    h("div", { class: "columns" },
      h("div", { class: "card" }, h("h3", {}, "Storage"), storage),
      h("div", { class: "card" }, h("h3", {}, "Events"),
        h("p", { class: "muted small" }, "Job, destination and file changes seen by this page (polled every 3 s), and ingest events (live)."), feed)),
    h("div", { class: "card" }, h("h3", {}, "Nodes"), nodes));

  async function update() {
    feed.replaceChildren(feedList(store));
    const [nodeRows, info] = await Promise.allSettled([call("nodes/getAll", {}), call("storage/getInfo", {})]);
    if (nodeRows.status === "fulfilled") {
      nodes.replaceChildren(table(
        ["Node", "Service", "State", "Host", "Jobs", "Version", "Started", "Last seen"],
        nodeRows.value.map((n) => h("tr", { dataset: { testid: "node-row" } },
          h("td", {}, h("code", {}, n.node_id)),
          h("td", {}, n.service),
          h("td", {}, n.alive ? badge("running", "alive") : badge(n.state === "stopped" ? "stopped" : "failed", n.state === "stopped" ? "" : "missed its heartbeats")),
          h("td", {}, n.host ?? ""),
          h("td", {}, n.capacity ? `${n.running_jobs ?? 0} / ${n.capacity}` : String(n.running_jobs ?? "–")),
          h("td", {}, n.version ?? ""),
          h("td", {}, when(n.started)),
          h("td", {}, when(n.last_seen)))),
        { empty: "No nodes have reported yet." }));
    } else {
      nodes.replaceChildren(h("p", { class: "error" }, nodeRows.reason.message));
    }
    if (info.status === "fulfilled") {
      storage.replaceChildren(gauge(info.value), table(["Recording", "Files", "Size"],
        info.value.per_job.filter((j) => j.files).map((j) => h("tr", {},
          h("td", {}, j.recording_name ?? j.id), h("td", {}, String(j.files)), h("td", {}, bytes(j.bytes)))),
        { empty: "No recorded files." }));
    } else {
      storage.replaceChildren(h("p", { class: "error" }, info.reason.message));
    }
  }

  return { el, update };
}
