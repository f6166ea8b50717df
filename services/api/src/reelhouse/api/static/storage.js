// Storage targets (issue 24): the S3-compatible buckets recordings are uploaded to. The list,
// a create/edit form and a Test button answering ok or what failed (auth, no_bucket,
// unreachable, ...; never the server's text). Credentials are write-only: the API never answers
// them, so the form's key fields start empty, and an edit keeps the stored keys when both are
// left empty. A viewer sees the list only.
import { call, session } from "./api.js";
import { checkbox, clearErrors, field, input, required, select, showErrors } from "./forms.js";
import { act, badge, button, h, table } from "./ui.js";

const PROVIDERS = [["s3", "AWS S3"], ["r2", "Cloudflare R2"], ["b2", "Backblaze B2"], ["wasabi", "Wasabi"], ["other", "Other S3-compatible"]];
const CLASSES = ["STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER", "GLACIER_IR", "DEEP_ARCHIVE", "REDUCED_REDUNDANCY"];

function targetForm(target, onSaved, onCancel) {
  const name = input({ value: target?.storage_name ?? "", maxlength: 128 });
  const provider = select(PROVIDERS, target?.provider ?? "s3");
  const endpoint = input({ value: target?.endpoint_url ?? "", placeholder: "https://s3.eu-west-1.amazonaws.com" });
  const region = input({ value: target?.region ?? "us-east-1" });
  const bucket = input({ value: target?.bucket ?? "" });
  const prefix = input({ value: target?.prefix ?? "", placeholder: "none" });
  const pathStyle = checkbox(target?.path_style ?? false);
  const storageClass = select([["", "the bucket's default"], ...CLASSES.map((c) => [c, c])], target?.storage_class ?? "");
  // Write-only: never filled from the API (it answers only whether keys are set).
  const keyId = input({ autocomplete: "off", placeholder: target ? "unchanged" : "" });
  const secret = input({ type: "password", autocomplete: "new-password", placeholder: target ? "unchanged" : "" });
  const keysHint = target ? "write-only; leave both empty to keep the stored keys" : "write-only: stored sealed, never shown again";
  const form = h("form", { class: "card form", novalidate: true, dataset: { testid: "target-form" } },
    h("h3", {}, target ? `Edit storage target "${target.storage_name}"` : "New storage target"),
    h("div", { class: "form-error", role: "alert" }),
    h("div", { class: "grid" },
      field("storage_name", "Name", name),
      field("provider", "Provider", provider),
      field("endpoint_url", "Endpoint URL", endpoint, "http(s)://host[:port]"),
      field("region", "Region", region),
      field("bucket", "Bucket", bucket),
      field("prefix", "Key prefix", prefix),
      field("path_style", "Path-style addressing", pathStyle),
      field("storage_class", "Storage class", storageClass),
      field("access_key_id", "Access key id", keyId, keysHint),
      field("secret_access_key", "Secret access key", secret)),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary", dataset: { testid: "save" } }, target ? "Save" : "Create"),
      button("Cancel", onCancel)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const errors = required(form, ["storage_name", "endpoint_url", "bucket", ...(target ? [] : ["access_key_id", "secret_access_key"])]);
    if (errors.length) return showErrors(form, errors);
    const body = {
      storage_name: name.value.trim(), provider: provider.value, endpoint_url: endpoint.value.trim(),
      region: region.value.trim() || "us-east-1", bucket: bucket.value.trim(), prefix: prefix.value.trim(),
      path_style: pathStyle.checked, storage_class: storageClass.value || null,
    };
    if (keyId.value || secret.value || !target) {
      body.access_key_id = keyId.value.trim();
      body.secret_access_key = secret.value;
    }
    if (target) body.id = target.id;
    try {
      const saved = await call(`storage-targets/${target ? "update" : "create"}`, body);
      secret.value = "";
      onSaved(saved);
    } catch (err) {
      showErrors(form, err.details ?? [], err.message);
    }
  });
  return form;
}

export function storageView() {
  const operator = session.can("operator");
  const list = h("div", { class: "list" });
  const formBox = h("div", { class: "form-box" });
  const results = new Map(); // target id → its last test answer (or "testing")
  const el = h("section", { class: "view", dataset: { testid: "storage-view" } },
    h("header", { class: "view-head" }, h("h2", {}, "Storage targets"),
      operator ? button("New storage target", () => openForm(null), { class: "primary", dataset: { testid: "new-target" } }) : null),
    h("p", { class: "muted small" }, "S3-compatible buckets a recording's files are uploaded to (a recording names one as ",
      h("code", {}, "storage_id"), "). Keys are write-only."),
    formBox, list);
  let rows = [];

  function openForm(target) {
    formBox.replaceChildren(targetForm(target, async () => {
      formBox.replaceChildren();
      await update();
    }, () => formBox.replaceChildren()));
    formBox.querySelector("input")?.focus();
  }

  function result(target) {
    const answer = results.get(target.id);
    if (!answer) return h("span", { class: "muted" }, "–");
    if (answer === "testing") return badge("waiting", "testing…");
    return answer.ok ? badge("ok", `${answer.elapsed_ms} ms`) : badge("failed", answer.failure);
  }

  async function test(target) {
    results.set(target.id, "testing");
    render();
    const answer = await act(() => call("storage-targets/test", { id: target.id }));
    if (answer) results.set(target.id, answer);
    else results.delete(target.id);
    render();
  }

  async function remove(target) {
    if (!confirm(`Remove the storage target "${target.storage_name}"?`)) return;
    await act(() => call("storage-targets/remove", { id: target.id }));
    await update();
  }

  function render() {
    list.replaceChildren(table(
      ["Name", "Provider", "Endpoint", "Bucket", "Prefix", "Class", "Keys", "Test", ""],
      rows.map((t) => h("tr", { dataset: { testid: "target-row", id: t.id } },
        h("td", {}, h("strong", {}, t.storage_name)),
        h("td", {}, t.provider),
        h("td", {}, h("code", {}, t.endpoint_url), t.path_style ? h("small", { class: "muted" }, " path-style") : null),
        h("td", {}, h("code", {}, t.bucket)),
        h("td", {}, t.prefix ? h("code", {}, t.prefix) : "–"),
        h("td", {}, t.storage_class ?? "default"),
        h("td", {}, t.credentials_set ? "set" : "missing"),
        h("td", { dataset: { testid: "test-result" } }, result(t)),
        h("td", { class: "actions" }, !operator ? null : [
          button("Test", () => test(t), { dataset: { testid: "test-target" } }),
          button("Edit", () => openForm(t), { dataset: { testid: "edit-target" } }),
          button("Remove", () => remove(t), { class: "danger", dataset: { testid: "remove-target" } })]))),
      { empty: "No storage targets yet.", testid: "targets-table" },
    ));
  }

  async function update() {
    try {
      rows = await call("storage-targets/getAll", {});
    } catch (err) {
      list.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    render();
  }

  return { el, update };
}
