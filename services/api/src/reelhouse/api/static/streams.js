// Streams: the rows with their monitor status, and the getStreamInfo inspector (ffprobe through
// the prober) showing each track in a readable table. Probing and monitoring are operator
// actions: a viewer sees the rows only.
import { call, session } from "./api.js";
import { field, input } from "./forms.js";
import { act, badge, button, bytes, duration, h, table, when } from "./ui.js";

function rate(fraction) {
  const [num, den] = String(fraction || "").split("/").map(Number);
  return den ? (num / den).toFixed(2).replace(/\.00$/, "") : "";
}

function trackDetails(s) {
  if (s.codec_type === "video") {
    return [s.width && `${s.width}×${s.height}`, rate(s.avg_frame_rate || s.r_frame_rate) && `${rate(s.avg_frame_rate || s.r_frame_rate)} fps`,
      s.pix_fmt, s.field_order && s.field_order !== "progressive" ? s.field_order : null].filter(Boolean).join(", ");
  }
  if (s.codec_type === "audio") {
    return [s.sample_rate && `${s.sample_rate} Hz`, s.channel_layout || (s.channels && `${s.channels} ch`), s.sample_fmt]
      .filter(Boolean).join(", ");
  }
  return "";
}

export function trackTable(info) {
  const rows = (info.streams ?? []).map((s) => h(
    "tr",
    { dataset: { testid: "track-row" } },
    h("td", {}, String(s.index ?? "")),
    h("td", {}, s.codec_type ?? ""),
    h("td", { title: s.codec_long_name ?? "" }, s.codec_name ?? ""),
    h("td", {}, s.profile ?? ""),
    h("td", {}, trackDetails(s)),
    h("td", {}, s.bit_rate ? `${Math.round(Number(s.bit_rate) / 1000)} kbit/s` : "–"),
    h("td", {}, s.tags?.language ?? ""),
  ));
  const f = info.format ?? {};
  return h("div", { class: "inspection", dataset: { testid: "stream-info" } },
    table(["#", "Type", "Codec", "Profile", "Details", "Bitrate", "Language"], rows, { empty: "No tracks." }),
    h("p", { class: "muted small" },
      [f.format_long_name || f.format_name, f.duration && `duration ${duration(Number(f.duration) * 1000)}`,
        f.bit_rate && `${Math.round(Number(f.bit_rate) / 1000)} kbit/s overall`, f.size && bytes(f.size)]
        .filter(Boolean).join(" · ")));
}

export function streamsView(store) {
  const operator = session.can("operator");
  const list = h("div", { class: "list" });
  const result = h("div", { class: "inspector-result" });
  const url = input({ placeholder: "srt://127.0.0.1:1935 or rtmp://… or http(s)://…m3u8" });
  const inspector = h("form", { class: "card form inline", dataset: { testid: "inspector" } },
    h("div", { class: "form-error", role: "alert" }),
    field("stream_url", "Inspect a live URL", url),
    h("button", { type: "submit", class: "primary" }, "Inspect"));
  inspector.addEventListener("submit", (event) => {
    event.preventDefault();
    inspect(url.value.trim());
  });

  const el = h("section", { class: "view", dataset: { testid: "streams-view" } },
    h("header", { class: "view-head" }, h("h2", {}, "Streams")), list, operator ? inspector : null, result);

  async function inspect(target) {
    if (!target) return;
    url.value = target;
    result.replaceChildren(h("p", { class: "muted" }, `Probing ${target}…`));
    try {
      const info = await call("streams/getStreamInfo", { stream_url: target });
      result.replaceChildren(h("h3", {}, target), trackTable(info));
    } catch (err) {
      result.replaceChildren(h("p", { class: "error" }, `${err.code}: ${err.message}`));
    }
  }

  function monitor(row) {
    if (!row.active) return badge("stopped", "not monitored");
    if (!row.status) return badge("starting", "waiting for a prober");
    return badge(row.status.state, row.status.error || (row.status.since ? `since ${when(row.status.since)}` : ""));
  }

  async function setActive(row, active) {
    await act(() => call(`streams/${active ? "start" : "stop"}`, { id: row.id }));
    await update();
  }

  async function update() {
    let rows;
    try {
      rows = await call("streams/getAll", {});
    } catch (err) {
      list.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    list.replaceChildren(table(
      ["Name", "Role", "Stream id", "URL", "Monitor", "Tracks", ""],
      rows.map((row) => h("tr", { dataset: { testid: "stream-row", id: row.id } },
        h("td", {}, h("strong", {}, row.name)),
        h("td", {}, row.role_name ?? ""),
        h("td", {}, h("code", {}, row.stream_id ?? "")),
        h("td", {}, h("code", {}, row.stream_url || "–")),
        h("td", {}, monitor(row)),
        h("td", {}, row.stream_info?.streams ? `${row.stream_info.streams.length} tracks` : "–"),
        h("td", { class: "actions" }, !operator ? null : [
          row.stream_url ? button("Inspect", () => inspect(row.stream_url)) : null,
          row.active ? button("Stop monitoring", () => setActive(row, false))
            : button("Monitor", () => setActive(row, true), { disabled: !row.stream_url })]))),
      { empty: "No stream rows yet (they are created through the API).", testid: "streams-table" },
    ));
  }

  return { el, update };
}
