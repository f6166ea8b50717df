// Form fields whose errors show next to them. A field is found by its API path
// (`data-field="input.input_stream_url"`): the API's validation errors name exactly that path.
import { h } from "./ui.js";

export function field(path, label, control, hint) {
  control.name = control.name || path;
  control.id = control.id || `f-${path.replaceAll(".", "-")}`;
  return h(
    "div",
    { class: "field", dataset: { field: path } },
    h("label", { for: control.id }, label),
    control,
    hint ? h("small", { class: "hint" }, hint) : null,
    h("div", { class: "field-error", role: "alert", dataset: { errorFor: path } }),
  );
}

export function input(attrs = {}) {
  return h("input", { type: "text", autocomplete: "off", ...attrs });
}

export function select(options, value, attrs = {}) {
  return h(
    "select",
    attrs,
    options.map(([v, text]) => h("option", { value: v, selected: String(v) === String(value) }, text ?? v)),
  );
}

export function checkbox(checked, attrs = {}) {
  return h("input", { type: "checkbox", checked: Boolean(checked), ...attrs });
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
  const general = form.querySelector(".form-error");
  if (general) general.textContent = "";
}

// Shows [{field, message}] next to the fields; a path the form has no field for goes to the
// nearest enclosing field ("recording_mode_settings.hours" → the clip-length control), else on
// top of the form.
export function showErrors(form, details, fallback) {
  clearErrors(form);
  const general = [];
  for (const { field: path, message } of details) {
    let target = null;
    let parts = String(path || "").split(".");
    while (parts.length && !target) {
      target = form.querySelector(`.field[data-field="${CSS.escape(parts.join("."))}"]`);
      parts = parts.slice(0, -1);
    }
    if (target) {
      target.classList.add("invalid");
      const box = target.querySelector(".field-error");
      box.textContent = box.textContent ? `${box.textContent}; ${message}` : message;
    } else {
      general.push(path && path !== "body" ? `${path}: ${message}` : message);
    }
  }
  if (!details.length && fallback) general.push(fallback);
  const box = form.querySelector(".form-error");
  if (box) box.textContent = general.join("\n");
  const first = form.querySelector(".field.invalid input, .field.invalid select");
  if (first) first.focus();
}

// What the page checks before sending (the rest is the API's: one set of rules, one message).
export function required(form, paths) {
  const errors = [];
  for (const path of paths) {
    const el = form.querySelector(`.field[data-field="${CSS.escape(path)}"] input`);
    if (el && !el.value.trim()) errors.push({ field: path, message: "required" });
  }
  return errors;
}

export function numberIn(value, min, max, path) {
  const n = Number(value);
  if (value === "" || !Number.isInteger(n) || n < min || n > max) {
    return [{ field: path, message: `a whole number from ${min} to ${max}` }];
  }
  return [];
}
