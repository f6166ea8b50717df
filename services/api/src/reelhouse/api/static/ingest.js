// Ingest: the SRT and RTMP servers encoders push into (docs/INGEST.md), the stream rows on them
// with their publish and read URLs, and a live panel per contribution fed by the WebSocket's
// statistics (about once a second). Servers and rows are polled with the rest of the page; the
// panels redraw on each statistics frame. Creating, editing, starting and removing are operator
// actions: a viewer sees the servers, rows and panels only.
import { call, session } from "./api.js";
import { checkbox, clearErrors, field, input, required, select, showErrors } from "./forms.js";
import { act, badge, button, bytes, h, notice, sparkline, table, when } from "./ui.js";

export const HISTORY_SAMPLES = 120; // two minutes at one statistics frame a second
const STALE_MS = 5000; // statistics older than this are a server's last words, not news

const PROTOS = {
  srt: { label: "SRT", module: "srt-servers", rows: "MODULE_SRT_SERVERS", transport: "UDP" },
  rtmp: { label: "RTMP", module: "rtmp-servers", rows: "MODULE_RTMP_SERVERS", transport: "TCP" },
};
const MODULE_PROTO = { MODULE_SRT_SERVERS: "srt", MODULE_RTMP_SERVERS: "rtmp" };

export function contributionKey(serverId, name) {
  return `${serverId}|${name}`;
}

// A statistics frame (IngestStats) into the store: the latest per server, and each live
// contribution's bitrate and RTT history.
export function recordIngestStats(store, stats) {
  const ingest = store.ingest;
  ingest.stats.set(stats.server_id, { ...stats, received: Date.now() });
  for (const c of stats.contributions ?? []) {
    const key = contributionKey(stats.server_id, c.name);
    const pub = publisherConn(stats, c.name);
    const hist = ingest.history.get(key) ?? { kbits: [], rtt: [] };
    hist.kbits.push(Number(c.bitrate_kbits) || 0);
    hist.rtt.push(Number(pub?.rtt_ms) || 0);
    for (const list of [hist.kbits, hist.rtt]) if (list.length > HISTORY_SAMPLES) list.shift();
    ingest.history.set(key, hist);
  }
}

function publisherConn(stats, name) {
  return (stats.conns ?? []).find((c) => c.stream_id === name && c.role === "publish");
}

// An ingest event (WebSocket) as a line of the page's events list: [kind, subject, text, at].
export function describeIngestEvent(store, e) {
  return [...describe(store, e), e.timestamp && !Number.isNaN(Date.parse(e.timestamp)) ? new Date(e.timestamp) : new Date()];
}

function describe(store, e) {
  const server = store.ingest.names.get(e.job_id) ?? `server ${String(e.job_id).slice(-6)}`;
  const who = e.name || e.stream_id || "";
  const from = e.remote ? ` from ${e.remote}` : "";
  switch (e.type) {
    case "publisher_up":
      return ["running", server, `publisher up: ${who}${from}`];
    case "publisher_lost":
      return ["failed", server, `publisher lost: ${who}${e.reason ? ` (${e.reason})` : ""}`];
    case "publisher_back":
      return ["running", server, `publisher back: ${who}${e.gap_ms != null ? ` after ${(e.gap_ms / 1000).toFixed(1)} s` : ""}`];
    case "publisher_replaced":
      return ["retrying", server, `publisher replaced: ${who}${from}${e.idle_ms != null ? ` (old one idle ${(e.idle_ms / 1000).toFixed(1)} s)` : ""}`];
    case "ingest_refused":
      return ["failed", server, `refused ${e.role === "read" ? "reader" : "publisher"} ${who}${from}: ${e.reason ?? "refused"}`];
    case "contribution_ended":
      return ["removed", server, `contribution ended: ${who}${e.reason ? ` (${e.reason})` : ""}`];
    default:
      return [e.type, server, e.type];
  }
}

function fixed(value, digits = 1) {
  const n = Number(value);
  return value === null || value === undefined || !Number.isFinite(n) ? null : n.toFixed(digits);
}

function metric(testid, label, value, unit = "", title = "") {
  const shown = value === null || value === undefined ? "–" : `${value}${unit ? ` ${unit}` : ""}`;
  return h("div", { class: "metric", title, dataset: { testid, value: value ?? "" } },
    h("span", { class: "metric-label" }, label), h("strong", {}, shown));
}

function since(epochS) {
  if (!epochS) return "–";
  const secs = Math.max(0, Math.round(Date.now() / 1000 - epochS));
  const ago = secs < 60 ? `${secs} s` : secs < 3600 ? `${Math.floor(secs / 60)} min` : `${(secs / 3600).toFixed(1)} h`;
  return `${new Date(epochS * 1000).toLocaleTimeString()} (${ago})`;
}

// One contribution's live panel: SRT transport statistics of its publisher, or RTMP bytes.
function livePanel(store, stats, c, rowName) {
  const key = contributionKey(stats.server_id, c.name);
  const hist = store.ingest.history.get(key) ?? { kbits: [], rtt: [] };
  const pub = publisherConn(stats, c.name);
  const state = c.held ? "waiting" : c.publisher ? "running" : "stopped";
  const reason = c.held ? "publisher gone, readers held" : c.publisher ? "live" : "no publisher";
  const srt = stats.proto === "srt";
  const metrics = [
    metric("m-bitrate", "Bitrate", fixed(c.bitrate_kbits, 0), "kbit/s"),
    srt ? metric("m-rtt", "RTT", fixed(pub?.rtt_ms, 2), "ms") : null,
    srt ? metric("m-loss", "Loss", pub?.pkt_recv_loss ?? null, "pkts", "packets lost on the way in (gosrt counts high: docs/INGEST.md)") : null,
    srt ? metric("m-retrans", "Retransmits", pub?.pkt_retrans ?? null, "pkts") : null,
    srt ? metric("m-drop", "Dropped", pub?.pkt_recv_drop ?? null, "pkts", "too late or duplicate") : null,
    srt ? metric("m-buffer", "Receive buffer", fixed(pub?.recv_buffer_ms, 0), "ms") : null,
    srt ? metric("m-latency", "Latency", fixed(pub?.latency_ms, 0), "ms") : null,
    srt ? metric("m-capacity", "Link capacity", pub?.link_capacity_kbits ? (pub.link_capacity_kbits / 1000).toFixed(1) : null, "Mbit/s") : null,
    metric("m-bytes", "Received", c.bytes ? bytes(c.bytes) : null),
    metric("m-readers", "Readers", c.readers ?? 0),
    metric("m-since", "Connected since", pub ? since(pub.connected_at) : null, "", pub?.remote_address ?? ""),
    c.gaps ? metric("m-gaps", "Gaps", `${c.gaps} (${(c.gap_ms_total / 1000).toFixed(1)} s)`) : null,
  ];
  return h("div", { class: "card live-panel", dataset: { testid: "live-panel", name: c.name, proto: stats.proto, samples: String(hist.kbits.length) } },
    h("div", { class: "live-head" },
      h("strong", {}, rowName ?? c.name), rowName ? h("code", {}, c.name) : null, badge(state, reason),
      pub ? h("span", { class: "muted small" }, pub.remote_address) : null),
    h("div", { class: "metrics" }, metrics),
    h("div", { class: "live-charts" },
      h("figure", {}, sparkline(hist.kbits, { width: 220, height: 36, what: "bitrate", unit: "kbit/s" }),
        h("figcaption", { class: "muted small" }, "bitrate, last 2 min")),
      srt ? h("figure", {}, sparkline(hist.rtt, { width: 220, height: 36, what: "RTT", unit: "ms", kind: "rtt" }),
        h("figcaption", { class: "muted small" }, "RTT, last 2 min")) : null));
}

function copyButton(text, testid) {
  const btn = button("Copy", async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // not a secure context: select the text and copy it the old way
      const area = h("textarea", { value: text, readonly: true, class: "offscreen" });
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    btn.textContent = "Copied";
    setTimeout(() => (btn.textContent = "Copy"), 1500);
  }, { class: "small-button", dataset: { testid }, title: "copy to the clipboard" });
  return btn;
}

function urlLine(label, url, testid) {
  if (!url) return null;
  return h("div", { class: "url-cell" }, h("span", { class: "url-label muted small" }, label),
    h("code", { dataset: { testid: `${testid}-url` } }, url), copyButton(url, `copy-${testid}`));
}

function serverState(server) {
  if (!server.active) return badge("stopped", "not open");
  if (!server.status) return badge("starting", "waiting for an ingest node");
  const s = server.status;
  // `since` is the ingest node's clock, Unix seconds
  const at = typeof s.since === "number" ? when(s.since * 1000) : s.since ? when(s.since) : "";
  return badge(s.state, s.error || [s.node && `on ${s.node}`, at && `since ${at}`].filter(Boolean).join(" "));
}

export function ingestView(store) {
  const operator = session.can("operator");
  const list = h("div", { class: "ingest-list" });
  const formBox = h("div", { class: "form-box" });
  const socketState = h("span", { class: "muted small", dataset: { testid: "live-state" } });
  const el = h("section", { class: "view", dataset: { testid: "ingest-view" } },
    h("header", { class: "view-head" }, h("h2", {}, "Ingest"), socketState,
      operator ? h("div", { class: "actions" },
        button("New SRT server", () => openServerForm("srt", null), { class: "primary", dataset: { testid: "new-srt-server" } }),
        button("New RTMP server", () => openServerForm("rtmp", null), { class: "primary", dataset: { testid: "new-rtmp-server" } })) : null),
    formBox, list);

  let servers = []; // [{proto, ...server}]
  let rows = [];
  const urls = new Map(); // row id → {stamp, publish_url, read_url}
  const liveBoxes = new Map(); // server id → the element its panels go into

  function closeForm() {
    formBox.replaceChildren();
  }

  function openServerForm(proto, server) {
    formBox.replaceChildren(serverForm(proto, server, async (saved) => {
      closeForm();
      notice(`Saved ${PROTOS[proto].label} server "${saved.server_name}".`);
      await update();
    }, closeForm));
    formBox.scrollIntoView({ block: "nearest" });
  }

  function openRowForm(server, row) {
    formBox.replaceChildren(rowForm(server, row, async (saved) => {
      closeForm();
      notice(`Saved stream "${saved.name}".`);
      urls.delete(saved.id);
      await update();
    }, closeForm));
    formBox.scrollIntoView({ block: "nearest" });
  }

  async function serverAction(server, verb) {
    const path = `${PROTOS[server.proto].module}/${verb}`;
    if (verb === "remove") {
      if (!confirm(`Remove ${PROTOS[server.proto].label} server "${server.server_name}"? Its encoders are disconnected.`)) return;
      await act(() => call(path, { id: server.id }, { method: "DELETE" }));
    } else {
      await act(() => call(path, { id: server.id }));
    }
    await update();
  }

  async function rowAction(row, verb) {
    if (verb === "remove") {
      if (!confirm(`Remove stream "${row.name}"?`)) return;
      await act(() => call("streams/remove", { id: row.id }, { method: "DELETE" }));
    } else {
      await act(() => call(`streams/${verb}`, { id: row.id }));
    }
    urls.delete(row.id);
    await update();
  }

  // publish_url and read_url come with getById (not getAll); fetched again only when the row
  // or its server changed.
  async function resolveUrls(byId) {
    const wanted = rows.filter((row) => byId.has(row.entity_id));
    await Promise.all(wanted.map(async (row) => {
      const stamp = `${row.modified}|${byId.get(row.entity_id).modified}`;
      if (urls.get(row.id)?.stamp === stamp) return;
      try {
        const full = await call("streams/getById", { id: row.id });
        urls.set(row.id, { stamp, publish_url: full.publish_url, read_url: full.read_url });
      } catch {
        urls.delete(row.id);
      }
    }));
  }

  function rowsTable(server) {
    const mine = rows.filter((row) => row.entity_id === server.id);
    return table(
      ["Stream", "Role", "Stream id", "Accepts", "URLs", ""],
      mine.map((row) => {
        const u = urls.get(row.id) ?? {};
        return h("tr", { dataset: { testid: "ingest-stream-row", id: row.id, name: row.name } },
          h("td", {}, h("strong", {}, row.name), row.host ? h("div", { class: "muted small" }, `host ${row.host}`) : null),
          h("td", {}, row.role_name),
          h("td", {}, h("code", {}, row.stream_id)),
          h("td", { title: row.active ? "accepts connections" : "refuses connections" },
            h("span", { class: `badge badge-${row.active ? "on" : "off"}`, dataset: { state: row.active ? "on" : "off" } }, row.active ? "yes" : "no")),
          h("td", {}, h("div", { class: "urls" },
            row.role_name === "publisher" ? urlLine("publish", u.publish_url, "publish") : null,
            urlLine("read", u.read_url, "read"))),
          h("td", { class: "actions" }, !operator ? null : [
            row.active ? button("Disable", () => rowAction(row, "stop"), { dataset: { testid: "row-stop" } })
              : button("Enable", () => rowAction(row, "start"), { dataset: { testid: "row-start" } }),
            button("Edit", () => openRowForm(server, row), { dataset: { testid: "row-edit" } }),
            button("Remove", () => rowAction(row, "remove"), { class: "danger", dataset: { testid: "row-remove" } })]));
      }),
      { empty: "No stream rows yet: add one for each encoder that pushes here.", testid: "ingest-rows" },
    );
  }

  function serverCard(server) {
    const p = PROTOS[server.proto];
    const live = h("div", { class: "live-panels", dataset: { testid: "live-panels" } });
    liveBoxes.set(server.id, live);
    const facts = [
      `${p.transport} port ${server.server_port}`,
      server.proto === "srt" ? `latency ${server.server_latency} ms` : null,
      server.proto === "srt" ? (server.server_passphrase ? "encrypted" : "no passphrase") : null,
      server.node ? `node ${server.node}` : null,
    ].filter(Boolean).join(" · ");
    const card = h("article", { class: "card ingest-server", dataset: { testid: "ingest-server", id: server.id, proto: server.proto, name: server.server_name } },
      h("header", { class: "view-head" },
        h("div", {},
          h("h3", {}, h("span", { class: "proto" }, p.label), " ", server.server_name),
          h("div", { class: "muted small", dataset: { testid: "server-facts" } }, facts)),
        h("div", { dataset: { testid: "server-status" } }, serverState(server)),
        h("div", { class: "actions" }, !operator ? null : [
          server.active ? button("Stop", () => serverAction(server, "stop"), { dataset: { testid: "server-stop" } })
            : button("Start", () => serverAction(server, "start"), { class: "primary", dataset: { testid: "server-start" } }),
          button("Edit", () => openServerForm(server.proto, server), { dataset: { testid: "server-edit" } }),
          button("Add stream", () => openRowForm(server, null), { dataset: { testid: "add-row" } }),
          button("Remove", () => serverAction(server, "remove"), { class: "danger", dataset: { testid: "server-remove" } })])),
      rowsTable(server),
      live);
    renderLive(server.id);
    return card;
  }

  // The panels of one server from its latest statistics (called on every frame).
  function renderLive(serverId) {
    const box = liveBoxes.get(serverId);
    if (!box) return;
    const stats = store.ingest.stats.get(serverId);
    // A server that stopped sending (closed, or its node away) has no live contribution.
    const fresh = stats && Date.now() - stats.received < STALE_MS;
    const contributions = fresh ? stats.contributions ?? [] : [];
    if (!contributions.length) {
      box.replaceChildren(h("p", { class: "muted small empty" }, "No live contribution."));
      return;
    }
    const names = new Map(rows.filter((row) => row.entity_id === serverId && row.role_name === "publisher")
      .map((row) => [contributionName(stats.proto, row.stream_id), row.name]));
    box.replaceChildren(...contributions.map((c) => livePanel(store, stats, c, names.get(c.name))));
  }

  function live(serverId) {
    renderLive(serverId);
  }

  function setSocketState(state, why) {
    const text = { live: "live statistics: connected", connecting: "live statistics: connecting…", down: `live statistics: reconnecting${why ? ` (${why})` : ""}` }[state] ?? "";
    socketState.textContent = text;
    socketState.dataset.state = state;
  }
  setSocketState(store.ingest.socket, store.ingest.socketWhy);

  async function update() {
    let srt;
    let rtmp;
    try {
      [srt, rtmp, rows] = await Promise.all([
        call("srt-servers/getAll", {}),
        call("rtmp-servers/getAll", {}),
        call("streams/getAll", {}),
      ]);
    } catch (err) {
      list.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    servers = [...srt.map((s) => ({ ...s, proto: "srt" })), ...rtmp.map((s) => ({ ...s, proto: "rtmp" }))];
    for (const s of servers) store.ingest.names.set(s.id, s.server_name);
    const byId = new Map(servers.map((s) => [s.id, s]));
    rows = rows.filter((row) => MODULE_PROTO[row.module_name] && byId.get(row.entity_id)?.proto === MODULE_PROTO[row.module_name]);
    await resolveUrls(byId);
    liveBoxes.clear();
    list.replaceChildren(...(servers.length ? servers.map(serverCard)
      : [h("p", { class: "muted empty card" }, "No ingest servers yet. An SRT server is one UDP port, an RTMP server one TCP port, that encoders push into.")]));
  }

  return { el, update, live, socket: setSocketState };
}

// The contribution a row's stream id names (docs/INGEST.md "Names").
export function contributionName(proto, streamId) {
  const id = String(streamId ?? "");
  if (proto === "rtmp") return id.split("?")[0].replace(/^\/+/, "");
  if (id.startsWith("publisher/")) return id.slice("publisher/".length);
  const r = /^#!::(?:.*,)?r=([^,]*)/.exec(id);
  return r ? r[1] : id;
}

function serverForm(proto, server, onSaved, onCancel) {
  const p = PROTOS[proto];
  const name = input({ value: server?.server_name ?? "", maxlength: 128 });
  const port = input({ type: "number", value: server?.server_port ?? "", min: 1, max: 65535 });
  const latency = input({ type: "number", value: server?.server_latency ?? 120, min: 20, max: 8000 });
  const passphrase = input({ type: "password", value: server?.server_passphrase ?? "", autocomplete: "new-password", placeholder: "none" });
  const node = input({ value: server?.node ?? "", placeholder: "any ingest node" });
  const active = checkbox(server ? server.active : true);
  const form = h("form", { class: "card form", novalidate: true, dataset: { testid: "server-form", proto } },
    h("h3", {}, server ? `Edit ${p.label} server "${server.server_name}"` : `New ${p.label} server`),
    h("div", { class: "form-error", role: "alert" }),
    h("div", { class: "grid" },
      field("server_name", "Name", name),
      field("server_port", `Port (${p.transport})`, port, "within the deployment's ingest port range"),
      proto === "srt" ? field("server_latency", "Latency (ms)", latency) : null,
      proto === "srt" ? field("server_passphrase", "Passphrase", passphrase, "empty, or 10 to 79 characters") : null,
      field("node", "Node", node),
      server ? null : field("active", "Open once created", active)),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary", dataset: { testid: "save" } }, server ? "Save" : "Create"),
      button("Cancel", onCancel)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const errors = required(form, ["server_name", "server_port"]);
    if (errors.length) return showErrors(form, errors);
    const body = { server_name: name.value.trim(), server_port: Number(port.value), node: node.value.trim() };
    if (proto === "srt") {
      body.server_latency = Number(latency.value);
      body.server_passphrase = passphrase.value;
    }
    if (server) body.id = server.id;
    else body.active = active.checked;
    try {
      onSaved(await call(`${p.module}/${server ? "update" : "create"}`, body));
    } catch (err) {
      showErrors(form, err.details, err.message);
    }
  });
  return form;
}

function rowForm(server, row, onSaved, onCancel) {
  const srt = server.proto === "srt";
  const name = input({ value: row?.name ?? "", maxlength: 128 });
  const role = select([["publisher", "publisher (an encoder pushes)"], ["receiver", "receiver (a player reads)"]], row?.role_name ?? "publisher");
  const streamId = input({ value: row?.stream_id ?? "", placeholder: srt ? "publisher/main-stage/cam" : "live/program" });
  const host = input({ value: row?.host ?? "", placeholder: "any address" });
  const passphrase = input({ type: "password", value: row?.passphrase ?? "", autocomplete: "new-password", placeholder: srt ? "the server's" : "no key" });
  const active = checkbox(row ? row.active : true);
  const form = h("form", { class: "card form", novalidate: true, dataset: { testid: "row-form" } },
    h("h3", {}, row ? `Edit stream "${row.name}"` : `New stream on "${server.server_name}"`),
    h("div", { class: "form-error", role: "alert" }),
    h("div", { class: "grid" },
      field("name", "Name", name),
      field("role_name", "Role", role),
      field("stream_id", "Stream id", streamId, srt ? "publisher/<name> pushes <name>; receiver/<name> reads it" : "the path after rtmp://host:port/"),
      field("host", "Host", host, "only this address may connect as this row"),
      field("passphrase", srt ? "Passphrase" : "Stream key", passphrase, srt ? "overrides the server's; 10 to 79 characters" : "sent as ?key= on the publish URL"),
      field("active", "Accepts connections", active)),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary", dataset: { testid: "save" } }, row ? "Save" : "Create"),
      button("Cancel", onCancel)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const errors = required(form, ["name", "stream_id"]);
    if (errors.length) return showErrors(form, errors);
    const body = {
      name: name.value.trim(), role_name: role.value, stream_id: streamId.value.trim(), host: host.value.trim(),
      passphrase: passphrase.value, active: active.checked,
    };
    if (row) body.id = row.id;
    else Object.assign(body, { entity_id: server.id, module_name: PROTOS[server.proto].rows });
    try {
      onSaved(await call(`streams/${row ? "update" : "create"}`, body));
    } catch (err) {
      showErrors(form, err.details, err.message);
    }
  });
  return form;
}
