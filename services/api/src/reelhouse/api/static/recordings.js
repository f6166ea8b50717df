// Recordings: the list the seed describes (name, live bitrate, FPS, creation time, number of
// files) with state badges, a bitrate sparkline and a live thumbnail; create/edit forms with the
// seed's labels; a job's files with download, delete and an in-page player. A viewer sees no
// button that needs the operator role (create, start, stop, edit, remove, delete a file).
import { call, hlsConfig, mediaBlobUrl, mediaUrl, session } from "./api.js";
import { checkbox, clearErrors, field, input, numberIn, required, select, showErrors } from "./forms.js";
import { act, badge, button, bytes, duration, h, kbits, notice, sparkline, table, when } from "./ui.js";

export const INPUT_TYPES = [
  ["INPUT_TYPE_SRT_URL", "SRT Stream URL (srt://)"],
  ["INPUT_TYPE_RTMP_URL", "RTMP URL (rtmp://)"],
  ["INPUT_TYPE_HLS_URL", "HLS URL (http(s)://…m3u8)"],
  ["INPUT_TYPE_MPEG_DASH_URL", "MPEG-DASH URL (http(s)://…mpd)"],
  ["INPUT_TYPE_RTSP_URL", "RTSP URL (rtsp://)"],
  ["INPUT_TYPE_RTP_URL", "RTP URL (rtp://)"],
  ["INPUT_TYPE_UDP_URL", "UDP URL (udp://)"],
  ["INPUT_TYPE_RIST_URL", "RIST URL (rist://)"],
];
const OUTPUT_FORMATS = ["mp4", "avi", "flv", "mp3", "m3u8", "mpegts", "mkv"].map((f) => [f]);
const VIDEO_CODECS = [["Disabled", "Disabled (copy)"], ["libx264", "H.264 (libx264)"], ["libx265", "H.265 (libx265)"]];
const AUDIO_CODECS = [["Disabled", "Disabled (copy)"], ["aac", "AAC"], ["libmp3lame", "MP3"], ["libopus", "Opus"], ["ac3", "AC-3"]];
const PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"].map((p) => [p]);
const SAMPLE_RATES = [8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000].map((r) => [r, `${r} Hz`]);
const PLAYABLE = new Set(["mp4", "m3u8", "mp3", "mkv"]);

// The blocks the dashboard always sends, as the seed's create example has them.
const SEED_BLOCKS = {
  recording_type: "RECORDING_STREAM_TO_FILE",
  transcoding: {
    video_transcoding: "Disabled", output_video_bitrate: 6000, preset: "ultrafast", tune: "Disabled",
    crf: "Disabled", pix_fmt: "Disabled", encoding_rate: "", filter_fps: "", gop: "Disabled",
    force_key_frames: 2, frame_width: "", frame_height: "", slices: "", cores: "", xlnx_hwdev: "0",
    audio_transcoding: "aac", output_audio_bitrate: 128, sample_rate: 44100,
  },
  modify_audio: { type: "DISABLED", channel: "1,2", track: "0" },
  modify_video: { type: "DISABLED" },
  overlay: { type: "DISABLED", position: { x: 1, y: 1 } },
  delete_after: 0,
};

// What a job is doing: the worker's runtime block, else the desired state.
export function jobState(job) {
  const rt = job.runtime;
  if (rt && rt.state) {
    if (rt.state === "retrying" || rt.state === "failed") return [rt.state, rt.last_error || ""];
    if (rt.degraded) return [rt.state, rt.degraded];
    if (!job.active && rt.state === "running") return ["stopping", ""];
    return [rt.state, ""];
  }
  return job.active ? ["starting", "waiting for a worker"] : ["stopped", ""];
}

function statKbits(data) {
  if (!data) return 0;
  if (data.bitrate_kbits) return Number(data.bitrate_kbits);
  const parsed = parseFloat(data.bitrate);
  return Number.isFinite(parsed) ? Math.round(parsed) : 0;
}

export function recordingsView(store) {
  const list = h("div", { class: "list" });
  const formBox = h("div", { class: "form-box" });
  const filesBox = h("div", { class: "files-box" });
  const playerBox = h("div", { class: "player-box" });
  const thumbs = new Map(); // job id → its <img>, kept across renders so it never flickers
  let filesOf = null; // the job whose files are open
  const operator = session.can("operator"); // views are rebuilt at each sign-in

  const el = h(
    "section",
    { class: "view", dataset: { testid: "recordings-view" } },
    h("header", { class: "view-head" }, h("h2", {}, "Recordings"),
      operator ? button("New recording", () => openForm(null), { class: "primary", dataset: { testid: "new-recording" } }) : null),
    formBox,
    list,
    filesBox,
    playerBox,
  );

  function thumbnail(job, running) {
    let img = thumbs.get(job.id);
    if (!img) {
      img = h("img", { class: "thumb", alt: `live picture of ${job.recording_name}`, dataset: { testid: "thumb" } });
      img.addEventListener("load", () => img.classList.add("loaded"));
      img.addEventListener("error", () => img.classList.remove("loaded"));
      thumbs.set(job.id, img);
    }
    if (running) loadThumbnail(job.id, img);
    return h("div", { class: "thumb-box" }, running ? img : h("span", { class: "muted" }, "–"));
  }

  // The newest picture, fetched with the access token in a header (an <img> cannot send one).
  async function loadThumbnail(id, img) {
    if (img.dataset.loading) return;
    img.dataset.loading = "1";
    try {
      const url = await mediaBlobUrl("recording/thumbnail", { id });
      const old = img.src;
      img.src = url;
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    } catch {
      img.classList.remove("loaded"); // 404 until the recorder wrote the first picture
    } finally {
      delete img.dataset.loading;
    }
  }

  function row(job) {
    const data = store.recStats.get(job.id);
    const [state, reason] = jobState(job);
    const running = state === "running" || state === "retrying";
    const history = store.history.get(`recording:${job.id}`) || [];
    return h(
      "tr",
      { dataset: { testid: "recording-row", id: job.id, name: job.recording_name } },
      h("td", {}, h("strong", {}, job.recording_name), h("div", { class: "muted small" }, `${job.output_format} · ${job.input?.[0]?.input_stream_url ?? ""}`)),
      h("td", {}, badge(state, reason)),
      h("td", {}, thumbnail(job, running)),
      h("td", { dataset: { testid: "bitrate", kbits: statKbits(data) } }, kbits(statKbits(data))),
      h("td", {}, sparkline(history)),
      h("td", { dataset: { testid: "fps" } }, data?.fps ?? "–"),
      h("td", {}, when(job.created)),
      h("td", { dataset: { testid: "file-count" } }, String(job.recordedFiles?.length ?? 0)),
      h("td", { class: "actions" },
        !operator ? null : job.active
          ? button("Stop", () => setActive(job, false), { dataset: { testid: "stop" } })
          : button("Start", () => setActive(job, true), { dataset: { testid: "start" }, class: "primary" }),
        operator ? button("Edit", () => openForm(job), { dataset: { testid: "edit" } }) : null,
        button("Files", () => openFiles(job), { dataset: { testid: "files" } }),
        button("Playback", () => openPlayback(job), { dataset: { testid: "playback" } }),
        operator ? button("Remove", () => remove(job), { class: "danger", dataset: { testid: "remove" } }) : null),
    );
  }

  async function setActive(job, active) {
    await act(() => call(`recording/${active ? "start" : "stop"}`, { id: job.id }));
    await store.refresh();
  }

  async function remove(job) {
    if (!confirm(`Remove "${job.recording_name}" and all its files?`)) return;
    await act(() => call("recording/remove", { id: job.id }, { method: "DELETE" }));
    if (filesOf === job.id) closeFiles();
    await store.refresh();
  }

  // -- the create/edit form -----------------------------------------------------------------

  function openForm(job) {
    formBox.replaceChildren(recordingForm(job, async (saved) => {
      formBox.replaceChildren();
      notice(`Saved "${saved.recording_name}".`);
      await store.refresh();
    }, () => formBox.replaceChildren()));
    formBox.querySelector("input")?.focus();
  }

  // -- files --------------------------------------------------------------------------------

  function openFiles(job) {
    filesOf = job.id;
    refreshFiles();
  }

  function closeFiles() {
    filesOf = null;
    filesBox.replaceChildren();
  }

  async function refreshFiles() {
    if (!filesOf) return;
    const jobId = filesOf;
    const job = store.recordings.find((j) => j.id === jobId);
    let found;
    try {
      found = await call("recording/getFiles", { record_id: jobId, limit: 100 });
    } catch (err) {
      filesBox.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    if (filesOf !== jobId) return;
    const rows = found.data.map((file) => h(
      "tr",
      { dataset: { testid: "file-row", id: file.id, status: file.status } },
      h("td", {}, file.file_name),
      h("td", {}, badge(file.status)),
      h("td", {}, bytes(file.size_bytes)),
      h("td", {}, duration(file.duration_ms)),
      h("td", {}, integrity(file.integrity)),
      h("td", {}, uploadState(file)),
      h("td", {}, when(file.created)),
      h("td", { class: "actions" },
        PLAYABLE.has(file.output_format) && ["ready", "archived"].includes(file.status)
          ? button("Play", () => play(jobId, file), { class: "primary", dataset: { testid: "play" } }) : null,
        button("Download", () => download(jobId, file), { dataset: { testid: "download" } }),
        operator ? button("Delete", () => removeFile(jobId, file), { class: "danger", dataset: { testid: "delete-file" } }) : null),
    ));
    filesBox.replaceChildren(
      h("header", { class: "view-head" },
        h("h3", {}, `Files of ${job?.recording_name ?? jobId}`, h("span", { class: "muted" }, ` (${found.meta.total})`)),
        button("Close", closeFiles)),
      table(["File", "Status", "Size", "Duration", "Integrity", "Upload", "Created", ""], rows,
        { empty: "No files yet.", testid: "files-table" }),
    );
  }

  function integrity(report) {
    if (!report) return h("span", { class: "muted" }, "–");
    if (report.join_failed) return h("span", { class: "warn", title: report.join_failed }, "join failed");
    const gaps = report.gaps?.length ?? 0;
    const title = `parts ${report.parts ?? 1}; media ${duration(report.duration_ms)} of ${duration(report.expected_ms)} expected`;
    return h("span", { class: gaps ? "warn" : "ok", title }, gaps ? `${gaps} gap${gaps > 1 ? "s" : ""}` : "complete");
  }

  // Object storage (issue 24): where the file's upload is. No upload block: the file is local
  // only (its job names no storage target, or it is an HLS recording).
  function uploadState(file) {
    const upload = file.upload;
    if (!upload?.state) return h("span", { class: "muted", dataset: { testid: "upload-state", state: "local" } }, "local");
    const tag = (reason, title) => {
      const el = badge(upload.state, reason);
      el.dataset.testid = "upload-state";
      if (title) el.title = title;
      return el;
    };
    if (upload.state === "uploading") {
      const total = upload.size && upload.part_size ? Math.max(1, Math.ceil(upload.size / upload.part_size)) : 0;
      const done = upload.parts?.length ?? 0;
      return tag(total > 1 ? `${done}/${total} parts` : bytes(upload.size), upload.key);
    }
    if (upload.state === "uploaded") return tag(upload.local_removed_at || file.local_removed_at ? "local copy removed" : "", upload.key);
    if (upload.state === "failed") {
      const retry = upload.retry_at ? `; retry ${when(upload.retry_at)}` : "";
      return tag(`${upload.reason ?? "error"}${upload.attempts ? `, attempt ${upload.attempts}` : ""}`, `retries${retry}`);
    }
    return tag(""); // pending
  }

  async function signedUrl(jobId, file) {
    const answer = await call("recording/getDownloadUrl", { record_id: jobId, file_id: file.id });
    if (!answer.url) throw new Error(answer.message || "the file is not ready yet");
    return answer.url;
  }

  async function download(jobId, file) {
    await act(async () => {
      const link = h("a", { href: await signedUrl(jobId, file), download: file.file_name });
      document.body.append(link);
      link.click();
      link.remove();
    });
  }

  async function removeFile(jobId, file) {
    if (!confirm(`Delete ${file.file_name}?`)) return;
    await act(() => call("recording/removeFile", { record_id: jobId, file_id: file.id }));
    await refreshFiles();
    await store.refresh();
  }

  async function play(jobId, file) {
    await act(async () => {
      const video = h("video", { controls: true, autoplay: true, muted: true, playsInline: true, dataset: { testid: "player" } });
      video.muted = true; // autoplay is allowed muted
      playerBox.replaceChildren(
        h("header", { class: "view-head" }, h("h3", {}, `Playing ${file.file_name}`),
          button("Close", () => { video.pause(); playerBox.replaceChildren(); })),
        video,
      );
      if (file.output_format === "m3u8") {
        const { default: Hls } = await import("./vendor/hls.js/hls.light.min.mjs");
        const path = `recording/play/${file.id}/${encodeURIComponent(file.file_name)}`;
        if (Hls.isSupported()) {
          const hls = new Hls(hlsConfig()); // the access token in a header of every request
          hls.on(Hls.Events.ERROR, (_e, data) => data.fatal && notice(`player: ${data.details}`, "error"));
          hls.loadSource(`/api/${path}`);
          hls.attachMedia(video);
        } else {
          video.src = mediaUrl(path); // Safari's native HLS sends no headers: ?token=<access JWT>
        }
      } else {
        video.src = await signedUrl(jobId, file); // ranged, signed, expiring
      }
      video.play().catch(() => {});
    });
  }

  // -- playback by wall-clock time (getPlayback, getPlaybackUrl) ----------------------------

  async function openPlayback(job) {
    await act(async () => {
      const found = await call("recording/getPlayback", { id: job.id });
      const first = found.spans[0];
      const last = found.spans[found.spans.length - 1];
      const start = input({ value: first?.start ?? "", size: 26, dataset: { testid: "playback-start" } });
      const total = first ? (Date.parse(last.end) - Date.parse(first.start)) / 1000 : 60;
      const length = input({ type: "number", min: 1, value: Math.max(1, Math.ceil(total)), dataset: { testid: "playback-duration" } });
      const format = select([["hls", "HLS (player)"], ["mp4", "MP4 file"], ["ts", "MPEG-TS file"]], "hls");
      const precise = checkbox(false);
      const clock = h("span", { class: "muted", dataset: { testid: "playback-clock" } }, "");
      const seekTo = input({ size: 26, placeholder: "wall-clock time (ISO)", dataset: { testid: "playback-seek" } });
      const video = h("video", { controls: true, autoplay: true, muted: true, playsInline: true, dataset: { testid: "playback-player" } });
      video.muted = true;
      let hls = null;
      const stopPlayer = () => { video.pause(); if (hls) { hls.destroy(); hls = null; } };
      const spans = table(["Start", "End", "Media", "Files"], found.spans.map((s) => h("tr", { dataset: { testid: "span-row" } },
        h("td", {}, s.start), h("td", {}, s.end), h("td", {}, duration(s.duration * 1000)), h("td", {}, String(s.files.length)))),
      { empty: "No recorded media yet.", testid: "spans-table" });
      const gaps = table(["From", "To", "Length", "Cause"], found.gaps.map((g) => h("tr", { dataset: { testid: "gap-row" } },
        h("td", {}, g.from), h("td", {}, g.to), h("td", {}, duration(g.duration_ms)), h("td", {}, g.cause))),
      { empty: "No gaps.", testid: "gaps-table" });

      async function play() {
        await act(async () => {
          stopPlayer();
          const body = { id: job.id, start: start.value, duration: Number(length.value), format: format.value };
          if (format.value !== "hls") body.precise = precise.checked;
          const answer = await call("recording/getPlaybackUrl", body);
          if (format.value === "hls") {
            const { default: Hls } = await import("./vendor/hls.js/hls.light.min.mjs");
            if (Hls.isSupported()) {
              hls = new Hls(hlsConfig());
              hls.on(Hls.Events.ERROR, (_e, data) => data.fatal && notice(`player: ${data.details}`, "error"));
              hls.loadSource(answer.url); // signed: the URL is its own authority
              hls.attachMedia(video);
            } else {
              video.src = answer.url; // Safari's native HLS
            }
          } else {
            video.src = answer.url; // one file of the range, made while it plays
          }
          video.play().catch(() => {});
        });
      }

      // Seek by wall-clock time: the fragment whose program date-time holds it (hls.js).
      function seek() {
        const at = Date.parse(seekTo.value);
        const frags = hls?.levels?.[0]?.details?.fragments ?? [];
        const frag = frags.find((f) => f.programDateTime <= at && at < f.programDateTime + f.duration * 1000);
        if (!frag) { notice("no recorded media at that time in this range", "error"); return; }
        video.currentTime = frag.start + (at - frag.programDateTime) / 1000;
      }

      video.addEventListener("timeupdate", () => {
        const date = hls?.playingDate;
        clock.textContent = date ? date.toISOString() : "";
      });
      playerBox.replaceChildren(
        h("header", { class: "view-head" }, h("h3", {}, `Playback of ${job.recording_name}`),
          button("Close", () => { stopPlayer(); playerBox.replaceChildren(); })),
        h("div", { class: "card", dataset: { testid: "playback-view" } },
          h("p", {}, `Recorded media: ${duration(found.media_duration * 1000)} in ${found.spans.length} span(s), ${found.gaps.length} gap(s).`),
          spans, gaps,
          h("div", { class: "grid" },
            field("playback.start", "Start (ISO 8601)", start), field("playback.duration", "Duration (s)", length),
            field("playback.format", "Format", format), field("playback.precise", "Exact cut (mp4/ts)", precise)),
          h("div", { class: "form-actions" },
            button("Play", play, { class: "primary", dataset: { testid: "playback-play" } }),
            seekTo, button("Go to time", seek, { dataset: { testid: "playback-go" } }), clock)),
        video,
      );
    });
  }

  // -- the live list ------------------------------------------------------------------------

  function update() {
    const rows = store.recordings.map(row);
    list.replaceChildren(table(
      ["Name", "State", "Live", "Bitrate", "Last minutes", "FPS", "Created", "Files", ""], rows,
      { empty: "No recordings yet: create one.", testid: "recordings-table" },
    ));
    for (const [id, img] of thumbs) {
      if (store.recordings.some((j) => j.id === id)) continue;
      if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
      thumbs.delete(id);
    }
    if (filesOf) refreshFiles();
  }

  return { el, update };
}

export function recordingForm(job, onSaved, onCancel) {
  const blocks = job
    ? Object.fromEntries(Object.keys(SEED_BLOCKS).map((k) => [k, job[k] ?? SEED_BLOCKS[k]]))
    : structuredClone(SEED_BLOCKS);
  const inp = job?.input?.[0] ?? {};
  const t = blocks.transcoding;
  const split = job?.recording_mode === "RECORDING_MODE_SPLIT_BY_TIME";
  const clip = job?.recording_mode_settings ?? { hours: 0, minutes: 10, seconds: 0 };

  const name = input({ value: job?.recording_name ?? "", maxlength: 128, placeholder: "Main-program-archive" });
  const inputType = select(INPUT_TYPES, inp.input_type ?? "INPUT_TYPE_SRT_URL");
  const url = input({ value: inp.input_stream_url ?? "", placeholder: "srt://127.0.0.1:1935" });
  const format = select(OUTPUT_FORMATS, job?.output_format ?? "mp4");
  const clipMode = checkbox(split, { role: "switch" });
  const hours = input({ type: "number", min: 0, max: 168, value: clip.hours });
  const minutes = input({ type: "number", min: 0, max: 59, value: clip.minutes });
  const seconds = input({ type: "number", min: 0, max: 59, value: clip.seconds });
  const clipControl = h("div", { class: "clip" },
    h("label", {}, hours, " hours"), h("label", {}, minutes, " minutes"), h("label", {}, seconds, " seconds"));
  const vcodec = select(VIDEO_CODECS, t.video_transcoding);
  const vrate = input({ type: "number", min: 1, value: t.output_video_bitrate });
  const preset = select(PRESETS, t.preset === "Disabled" ? "ultrafast" : t.preset);
  const acodec = select(AUDIO_CODECS, t.audio_transcoding === "mp3" ? "libmp3lame" : t.audio_transcoding);
  const arate = input({ type: "number", min: 1, value: t.output_audio_bitrate });
  const sampleRate = select(SAMPLE_RATES, t.sample_rate);
  const deleteAfter = input({ type: "number", min: 0, max: 36500, value: blocks.delete_after ?? 0 });
  const active = checkbox(job ? job.active : true);

  const form = h(
    "form",
    { class: "card form", novalidate: true, dataset: { testid: "recording-form" } },
    h("h3", {}, job ? `Edit "${job.recording_name}"` : "New recording"),
    h("div", { class: "form-error", role: "alert" }),
    h("div", { class: "grid" },
      field("recording_name", "Name", name, "A-Z, a-z, 0-9, and -"),
      field("input.input_type", "Input type", inputType),
      field("input.input_stream_url", "Input URL", url),
      field("output_format", "Output format", format),
      field("recording_mode", "Auto Clip Mode", clipMode, "Off: one continuous file. On: a new file every…"),
      field("recording_mode_settings", "Clip length", clipControl),
      field("transcoding.video_transcoding", "Video transcoding", vcodec),
      field("transcoding.output_video_bitrate", "Video bitrate (kbit/s)", vrate),
      field("transcoding.preset", "Preset", preset),
      field("transcoding.audio_transcoding", "Audio transcoding", acodec),
      field("transcoding.output_audio_bitrate", "Audio bitrate (kbit/s)", arate),
      field("transcoding.sample_rate", "Sample rate", sampleRate),
      field("delete_after", "Auto deletion after (days)", deleteAfter, "0: never"),
      field("active", "Enable once created", active)),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary", dataset: { testid: "save" } }, job ? "Save" : "Create"),
      button("Cancel", onCancel)),
  );

  // The clip length only matters in split mode (the seed's drag-and-drop timing control).
  const clipField = form.querySelector('.field[data-field="recording_mode_settings"]');
  clipField.hidden = !split;
  clipMode.addEventListener("change", () => { clipField.hidden = !clipMode.checked; });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const errors = [
      ...required(form, ["recording_name", "input.input_stream_url"]),
      ...numberIn(deleteAfter.value, 0, 36500, "delete_after"),
    ];
    if (clipMode.checked) {
      errors.push(...numberIn(hours.value, 0, 168, "recording_mode_settings.hours"),
        ...numberIn(minutes.value, 0, 59, "recording_mode_settings.minutes"),
        ...numberIn(seconds.value, 0, 59, "recording_mode_settings.seconds"));
    }
    if (errors.length) return showErrors(form, errors);
    const body = {
      ...blocks,
      recording_name: name.value.trim(),
      input: {
        input_type: inputType.value, application: "IO_APPLICATION_FFMPEG",
        input_stream_url: url.value.trim(), input_stream_listen_port: inp.input_stream_listen_port ?? {},
        input_settings: inp.input_settings ?? {}, input_module_id: inp.input_module_id ?? "",
        input_stream_id: inp.input_stream_id ?? "", entity_name: name.value.trim(),
        module_name: "MODULE_RECORDINGS",
      },
      output_format: format.value,
      recording_mode: clipMode.checked ? "RECORDING_MODE_SPLIT_BY_TIME" : "RECORDING_MODE_INFINITY",
      recording_mode_settings: clipMode.checked
        ? { hours: Number(hours.value), minutes: Number(minutes.value), seconds: Number(seconds.value) }
        : { hours: 0, minutes: 0, seconds: 0 },
      transcoding: {
        ...t, video_transcoding: vcodec.value, output_video_bitrate: Number(vrate.value), preset: preset.value,
        audio_transcoding: acodec.value, output_audio_bitrate: Number(arate.value), sample_rate: Number(sampleRate.value),
      },
      delete_after: Number(deleteAfter.value),
      active: active.checked,
    };
    if (job) {
      body.id = job.id;
      for (const key of ["max_files", "max_bytes", "seamless"]) if (job[key] !== undefined) body[key] = job[key];
    }
    try {
      const saved = await call(`recording/${job ? "update" : "create"}`, body);
      onSaved(saved);
    } catch (err) {
      showErrors(form, err.details, err.message);
    }
  });
  return form;
}
