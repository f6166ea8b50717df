// Restreams: list with live stats and each destination's state; create/edit (operators only).
import { call, session } from "./api.js";
import { checkbox, clearErrors, field, input, required, select, showErrors } from "./forms.js";
import { INPUT_TYPES, jobState } from "./recordings.js";
import { act, badge, button, h, kbits, notice, sparkline, table, when } from "./ui.js";

const OUTPUT_TYPES = [
  ["OUTPUT_TYPE_OTHER_RTMP_URL", "RTMP (rtmp://)"],
  ["OUTPUT_TYPE_SRT_URL", "SRT (srt://)"],
  ["OUTPUT_TYPE_UDP_URL", "UDP (udp://)"],
  ["OUTPUT_TYPE_HLS", "HLS (served for monitoring)"],
  ["OUTPUT_TYPE_DEV_NULL", "Nowhere (test the pipeline)"],
];

export function restreamsView(store) {
  const operator = session.can("operator");
  const list = h("div", { class: "list" });
  const formBox = h("div", { class: "form-box" });
  const el = h(
    "section",
    { class: "view", dataset: { testid: "restreams-view" } },
    h("header", { class: "view-head" }, h("h2", {}, "Restreams"),
      operator ? button("New restream", () => openForm(null), { class: "primary", dataset: { testid: "new-restream" } }) : null),
    formBox,
    list,
  );

  function destinations(job, stat) {
    const live = new Map((stat?.destinations ?? []).map((d) => [d.index, d]));
    return h("ul", { class: "destinations" }, (job.output ?? []).map((out, index) => {
      const d = live.get(index);
      return h("li", {},
        d ? badge(d.state, d.message || d.failure || "") : badge(job.active ? "waiting" : "idle"),
        " ", h("code", {}, d?.target ?? (out.output_stream_url || out.output_type)));
    }));
  }

  function row(job) {
    const stat = store.rsStats.get(job.id);
    const data = stat?.processData;
    const [state, reason] = jobState(job);
    return h(
      "tr",
      { dataset: { testid: "restream-row", id: job.id } },
      h("td", {}, h("strong", {}, job.restream_name),
        h("div", { class: "muted small" }, job.input?.[0]?.input_stream_url ?? "")),
      h("td", {}, badge(state, reason)),
      h("td", {}, destinations(job, stat)),
      h("td", {}, kbits(data?.bitrate_kbits)),
      h("td", {}, sparkline(store.history.get(`restream:${job.id}`) || [])),
      h("td", {}, data?.fps ?? "–"),
      h("td", {}, when(job.created)),
      h("td", { class: "actions" }, !operator ? null : [
        job.active
          ? button("Stop", () => setActive(job, false), { dataset: { testid: "stop" } })
          : button("Start", () => setActive(job, true), { class: "primary", dataset: { testid: "start" } }),
        button("Edit", () => openForm(job)),
        button("Remove", () => remove(job), { class: "danger" })]),
    );
  }

  async function setActive(job, active) {
    await act(() => call(`restream/${active ? "start" : "stop"}`, { id: job.id }));
    await store.refresh();
  }

  async function remove(job) {
    if (!confirm(`Remove "${job.restream_name}"?`)) return;
    await act(() => call("restream/remove", { id: job.id }, { method: "DELETE" }));
    await store.refresh();
  }

  function openForm(job) {
    formBox.replaceChildren(restreamForm(job, async (saved) => {
      formBox.replaceChildren();
      notice(`Saved "${saved.restream_name}".`);
      await store.refresh();
    }, () => formBox.replaceChildren()));
  }

  function update() {
    list.replaceChildren(table(
      ["Name", "State", "Destinations", "Bitrate", "Last minutes", "FPS", "Created", ""],
      store.restreams.map(row),
      { empty: "No restreams yet.", testid: "restreams-table" },
    ));
  }

  return { el, update };
}

function restreamForm(job, onSaved, onCancel) {
  const inp = job?.input?.[0] ?? {};
  const name = input({ value: job?.restream_name ?? "", maxlength: 128 });
  const inputType = select(INPUT_TYPES, inp.input_type ?? "INPUT_TYPE_SRT_URL");
  const url = input({ value: inp.input_stream_url ?? "", placeholder: "srt://127.0.0.1:1936" });
  const active = checkbox(job ? job.active : true);
  const outputs = h("div", { class: "outputs" });

  function outputRow(out = {}) {
    const index = outputs.children.length;
    const type = select(OUTPUT_TYPES, out.output_type ?? "OUTPUT_TYPE_SRT_URL");
    const target = input({ value: out.output_stream_url ?? "", placeholder: "srt://127.0.0.1:2035" });
    const key = input({ value: out.output_stream_key ?? "", placeholder: "stream key (RTMP)" });
    const rowEl = h("div", { class: "output-row" },
      field(`output.${index}.output_type`, `Destination ${index + 1}`, type),
      field(`output.${index}.output_stream_url`, "URL", target),
      field(`output.${index}.output_stream_key`, "Key", key),
      button("−", () => rowEl.remove(), { title: "remove this destination" }));
    rowEl.read = () => ({
      output_type: type.value, application: "IO_APPLICATION_FFMPEG",
      output_stream_url: target.value.trim(), output_stream_key: key.value.trim(),
    });
    outputs.append(rowEl);
  }
  for (const out of job?.output?.length ? job.output : [{}]) outputRow(out);

  const form = h(
    "form",
    { class: "card form", novalidate: true, dataset: { testid: "restream-form" } },
    h("h3", {}, job ? `Edit "${job.restream_name}"` : "New restream"),
    h("div", { class: "form-error", role: "alert" }),
    h("div", { class: "grid" },
      field("restream_name", "Name", name),
      field("input.input_type", "Input type", inputType),
      field("input.input_stream_url", "Input URL", url),
      field("active", "Enable once created", active)),
    h("h4", {}, "Destinations"),
    field("output", "", outputs),
    button("Add a destination", () => outputRow()),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary" }, job ? "Save" : "Create"),
      button("Cancel", onCancel)),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const errors = required(form, ["restream_name", "input.input_stream_url"]);
    if (errors.length) return showErrors(form, errors);
    const body = {
      restream_name: name.value.trim(),
      input: { input_type: inputType.value, application: "IO_APPLICATION_FFMPEG", input_stream_url: url.value.trim() },
      output: [...outputs.children].map((r) => r.read()),
      active: active.checked,
    };
    if (job) {
      body.id = job.id;
      for (const key of ["transcoding", "modify_audio", "modify_video", "overlay"]) if (job[key]) body[key] = job[key];
    }
    try {
      onSaved(await call(`restream/${job ? "update" : "create"}`, body));
    } catch (err) {
      showErrors(form, err.details, err.message);
    }
  });
  return form;
}
