// Channels (issue 22): watched live sources that record every broadcast. The list with each
// channel's status (offline, live, recording, error, disabled), add/edit/remove, "check now",
// stop the current recording, and a channel's recordings (one per broadcast, with its title and
// files). Changes arrive over the events WebSocket (`/api/events?modules=channel`): each event is
// shown in the channel events list and refreshes the list at once; the 3 s poll is the fallback.
// A viewer sees the channels and their recordings, and no button that needs the operator role.
import { call, eventsSocketUrl, session } from "./api.js";
import { checkbox, clearErrors, field, input, numberIn, required, select, showErrors } from "./forms.js";
import { act, badge, button, bytes, duration, h, notice, table, when } from "./ui.js";

const PLATFORMS = [["url", "Any live URL"], ["twitch", "Twitch"], ["youtube", "YouTube"], ["kick", "Kick"]];
const FORMATS = ["mp4", "mkv", "mpegts", "flv"].map((f) => [f]);
const EVENTS_KEPT = 100;
const RECONNECT_MS = 2000;

const patterns = (text) => text.split(",").map((p) => p.trim()).filter(Boolean);

export function channelsView(store) {
  const operator = session.can("operator");
  const list = h("div", { class: "list" });
  const formBox = h("div", { class: "form-box" });
  const recsBox = h("div", { class: "recordings-box" });
  const playerBox = h("div", { class: "player-box" });
  const eventsList = h("ol", { class: "feed", dataset: { testid: "channel-events" } });
  const socketState = h("span", { class: "muted small", dataset: { testid: "socket-state", state: "connecting" } }, "connecting…");
  let channels = [];
  let recsOf = null; // the channel whose recordings are open
  let socket = null;
  let lastId = null;
  let closed = false;
  let pending = null;

  const el = h(
    "section",
    { class: "view", dataset: { testid: "channels-view" } },
    h("header", { class: "view-head" }, h("h2", {}, "Channels"),
      operator ? button("Add channel", () => openForm(null), { class: "primary", dataset: { testid: "new-channel" } }) : null),
    formBox,
    list,
    recsBox,
    playerBox,
    h("div", { class: "card" },
      h("header", { class: "view-head" }, h("h3", {}, "Channel events"), socketState),
      eventsList),
  );

  // -- live events over the WebSocket -------------------------------------------------------

  function connect() {
    if (closed || !session.signedIn) return;
    const params = { modules: "channel" };
    if (lastId !== null) params.last_id = String(lastId); // resume without a gap
    const ws = new WebSocket(eventsSocketUrl(params));
    socket = ws;
    ws.addEventListener("message", (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame.type === "connected") {
        lastId = frame.last_id ?? lastId;
        socketState.textContent = "live";
        socketState.dataset.state = "live";
      } else if (frame.type === "event") {
        lastId = frame.id ?? lastId;
        onEvent(frame.event);
      }
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      socketState.textContent = "reconnecting…";
      socketState.dataset.state = "closed";
      if (!closed) setTimeout(connect, RECONNECT_MS);
    });
  }

  function onEvent(event) {
    const channel = channels.find((c) => c.id === event.channel_id);
    const name = channel?.name ?? event.channel_id;
    const detail = [event.title && `“${event.title}”`, event.category, event.reason].filter(Boolean).join(" · ");
    eventsList.prepend(h("li", { dataset: { type: event.type, channel: event.channel_id ?? "" } },
      h("time", { datetime: event.timestamp ?? "" }, new Date(event.timestamp ?? Date.now()).toLocaleTimeString()), " ",
      h("strong", {}, name), " ", event.type, detail ? ` – ${detail}` : ""));
    while (eventsList.children.length > EVENTS_KEPT) eventsList.lastElementChild.remove();
    store.feed.unshift({ at: new Date(), kind: event.type, subject: name, text: event.type + (detail ? `: ${detail}` : "") });
    store.feed.length = Math.min(store.feed.length, 200);
    store.renderFeed?.();
    // Coalesce a burst of events into one refresh.
    clearTimeout(pending);
    pending = setTimeout(() => update().catch((err) => notice(err.message, "error")), 150);
  }

  function destroy() {
    closed = true;
    clearTimeout(pending);
    socket?.close();
    socket = null;
  }

  // -- the list -----------------------------------------------------------------------------

  function liveText(c) {
    const live = c.live;
    if (!live?.live) return h("span", { class: "muted" }, "–");
    return h("span", {}, live.title ? h("strong", { dataset: { testid: "live-title" } }, live.title) : "untitled",
      live.category ? h("span", { class: "muted" }, ` · ${live.category}`) : null,
      live.started_at ? h("div", { class: "muted small" }, `since ${when(live.started_at)}`) : null);
  }

  function row(c) {
    return h(
      "tr",
      { dataset: { testid: "channel-row", id: c.id, name: c.name } },
      h("td", {}, h("strong", {}, c.name), h("div", { class: "muted small" }, `${c.platform} · ${c.url}`)),
      h("td", {}, badge(c.status, c.status === "error" ? c.last_error : "")),
      h("td", {}, liveText(c)),
      h("td", {}, when(c.last_checked)),
      h("td", {}, when(c.last_live)),
      h("td", { class: "actions" },
        operator && c.enabled ? button("Check now", () => check(c), { dataset: { testid: "check" } }) : null,
        operator && c.status === "recording" ? button("Stop recording", () => stop(c), { dataset: { testid: "stop" } }) : null,
        button("Recordings", () => openRecordings(c), { dataset: { testid: "recordings" } }),
        operator ? button("Edit", () => openForm(c), { dataset: { testid: "edit" } }) : null,
        operator ? button("Remove", () => remove(c), { class: "danger", dataset: { testid: "remove" } }) : null),
    );
  }

  async function check(c) {
    const info = await act(() => call(`channels/${c.id}/check`, {}));
    if (!info) return;
    const what = info.live ? `live${info.title ? `: “${info.title}”` : ""}` : "offline";
    notice(`${c.name} is ${what}${info.error ? ` (${info.error})` : ""}.`);
    await update();
  }

  async function stop(c) {
    await act(() => call(`channels/${c.id}/stop`, {}));
    await update();
  }

  async function remove(c) {
    if (!confirm(`Remove the channel "${c.name}", its recordings and their files?`)) return;
    await act(() => call(`channels/${c.id}`, {}, { method: "DELETE" }));
    if (recsOf === c.id) closeRecordings();
    await update();
  }

  function openForm(c) {
    formBox.replaceChildren(channelForm(c, async (saved) => {
      formBox.replaceChildren();
      notice(`Saved the channel "${saved.name}".`);
      await update();
    }, () => formBox.replaceChildren()));
    formBox.querySelector("input")?.focus();
  }

  // -- a channel's recordings ---------------------------------------------------------------

  function openRecordings(c) {
    recsOf = c.id;
    refreshRecordings();
  }

  function closeRecordings() {
    recsOf = null;
    recsBox.replaceChildren();
  }

  async function refreshRecordings() {
    if (!recsOf) return;
    const channelId = recsOf;
    let found;
    try {
      found = await call(`recordings?${new URLSearchParams({ channel: channelId })}`, {}, { method: "GET" });
    } catch (err) {
      recsBox.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    if (recsOf !== channelId) return;
    const name = channels.find((c) => c.id === channelId)?.name ?? channelId;
    const rows = found.recordings.map((r) => h(
      "tr",
      { dataset: { testid: "channel-recording-row", id: r.id, status: r.status } },
      h("td", { dataset: { testid: "recording-title" } }, r.title ?? h("span", { class: "muted" }, "untitled")),
      h("td", {}, r.category ?? "–"),
      h("td", {}, badge(r.status, r.end_reason && r.end_reason !== "offline" ? r.end_reason : "")),
      h("td", {}, when(r.started_at)),
      h("td", {}, when(r.ended_at)),
      h("td", { dataset: { testid: "recording-duration", seconds: r.duration } }, duration(r.duration * 1000)),
      h("td", {}, bytes(r.size)),
      h("td", { class: "actions" }, r.files.map((f) => ["ready", "archived"].includes(f.status)
        ? button(`Play ${f.file_name}`, () => play(r, f), { class: "primary", dataset: { testid: "play" } })
        : h("span", { class: "muted small" }, `${f.file_name} (${f.status})`))),
    ));
    recsBox.replaceChildren(
      h("header", { class: "view-head" },
        h("h3", {}, `Recordings of ${name}`, h("span", { class: "muted" }, ` (${found.total})`)),
        button("Close", closeRecordings)),
      table(["Title", "Category", "Status", "Started", "Ended", "Duration", "Size", "Files"], rows,
        { empty: "No recordings yet: one starts when the channel goes live.", testid: "channel-recordings" }),
    );
  }

  async function play(rec, file) {
    await act(async () => {
      const answer = await call("recording/getDownloadUrl", { record_id: rec.job_id, file_id: file.id });
      if (!answer.url) throw new Error(answer.message || "the file is not ready yet");
      const video = h("video", { controls: true, autoplay: true, muted: true, playsInline: true, dataset: { testid: "player" } });
      video.muted = true;
      playerBox.replaceChildren(
        h("header", { class: "view-head" }, h("h3", {}, `Playing ${rec.title ?? file.file_name}`),
          button("Close", () => { video.pause(); playerBox.replaceChildren(); })),
        video);
      video.src = answer.url; // ranged, signed, expiring
      video.play().catch(() => {});
    });
  }

  async function update() {
    if (!socket && !closed) connect();
    let found;
    try {
      found = await call("channels?limit=500", {}, { method: "GET" });
    } catch (err) {
      list.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    channels = found.channels;
    list.replaceChildren(table(
      ["Channel", "Status", "Live", "Last checked", "Last live", ""], channels.map(row),
      { empty: "No channels yet: add one, and each of its broadcasts is recorded.", testid: "channels-table" },
    ));
    if (recsOf && !channels.some((c) => c.id === recsOf)) closeRecordings();
    await refreshRecordings();
  }

  return { el, update, destroy };
}

export function channelForm(c, onSaved, onCancel) {
  const f = c?.filters ?? {};
  const name = input({ value: c?.name ?? "", maxlength: 128, placeholder: "Main-channel" });
  const platform = select(PLATFORMS, c?.platform ?? "url");
  const url = input({ value: c?.url ?? "", placeholder: "https://example.com/live.m3u8, or the platform login" });
  const quality = input({ value: c?.quality ?? "best" });
  const format = select(FORMATS, c?.output_format ?? "mp4");
  const titleInclude = input({ value: (f.title_include ?? []).join(", "), placeholder: "speedrun, *finals*" });
  const titleExclude = input({ value: (f.title_exclude ?? []).join(", ") });
  const categoryInclude = input({ value: (f.category_include ?? []).join(", ") });
  const categoryExclude = input({ value: (f.category_exclude ?? []).join(", ") });
  const quota = input({ type: "number", min: 0, value: c?.quota_bytes ?? 0 });
  const deleteAfter = input({ type: "number", min: 0, max: 36500, value: c?.delete_after ?? 0 });
  const enabled = checkbox(c ? c.enabled : true);

  const form = h(
    "form",
    { class: "card form", novalidate: true, dataset: { testid: "channel-form" } },
    h("h3", {}, c ? `Edit "${c.name}"` : "Add a channel"),
    h("div", { class: "form-error", role: "alert" }),
    h("div", { class: "grid" },
      field("name", "Name", name),
      field("platform", "Platform", platform),
      field("url", "Channel URL", url, "A live URL (url platform), or the channel's URL or login"),
      field("quality", "Quality", quality, "streamlink's names, best first: 720p,best"),
      field("output_format", "Output format", format),
      field("filters.title_include", "Title includes", titleInclude, "Comma-separated patterns; empty: any"),
      field("filters.title_exclude", "Title excludes", titleExclude),
      field("filters.category_include", "Category includes", categoryInclude),
      field("filters.category_exclude", "Category excludes", categoryExclude),
      field("quota_bytes", "Quota (bytes)", quota, "0: no quota"),
      field("delete_after", "Delete recordings after (days)", deleteAfter, "0: never"),
      field("enabled", "Watch this channel", enabled)),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary", dataset: { testid: "save" } }, c ? "Save" : "Add"),
      button("Cancel", onCancel)),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const errors = [
      ...required(form, ["name", "url"]),
      ...numberIn(deleteAfter.value, 0, 36500, "delete_after"),
      ...numberIn(quota.value, 0, Number.MAX_SAFE_INTEGER, "quota_bytes"),
    ];
    if (errors.length) return showErrors(form, errors);
    const body = {
      name: name.value.trim(),
      platform: platform.value,
      url: url.value.trim(),
      quality: quality.value.trim() || "best",
      enabled: enabled.checked,
      output_format: format.value,
      schedule: c?.schedule ?? null, // kept as it is (set through the API)
      filters: {
        title_include: patterns(titleInclude.value), title_exclude: patterns(titleExclude.value),
        category_include: patterns(categoryInclude.value), category_exclude: patterns(categoryExclude.value),
      },
      quota_bytes: Number(quota.value),
      delete_after: Number(deleteAfter.value),
    };
    try {
      const saved = await call(c ? `channels/${c.id}` : "channels", body, { method: c ? "PUT" : "POST" });
      onSaved(saved);
    } catch (err) {
      showErrors(form, err.details, err.message);
    }
  });
  return form;
}
