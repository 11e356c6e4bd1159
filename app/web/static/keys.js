// The key page: list, mint, roll, revoke and audit API keys with the session cookie, the way the
// vendor's own sample calls the API: fetch('/api/v1/keys', {credentials: 'include', ...}).
// No framework and no build step; the secret lives only in the page until it is dismissed.
"use strict";

const $ = (selector) => document.querySelector(selector);

class ApiError extends Error {
  constructor(status, error, retryAfter) {
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.details = error.details || {};
    this.requestId = error.request_id;
    this.retryAfter = retryAfter;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "include",
    ...options,
    headers: { Accept: "application/json", ...(options.headers || {}) },
  });
  if (response.status === 204) return null;
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error ? body.error
      : { code: "http_" + response.status, message: `The server answered ${response.status}.`, details: {} };
    throw new ApiError(response.status, error, response.headers.get("Retry-After"));
  }
  return body;
}

function explain(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server: ${error.message}`;
  switch (error.code) {
    case "duplicate_name":
      return `${error.message} Choose another name, or revoke the old key first.`;
    case "key_limit_reached":
      return `${error.message}`;
    case "key_not_rollable":
      return `${error.message}`;
    case "rate_limit_exceeded": {
      const seconds = error.details.retry_after || error.retryAfter;
      return `Too many requests: ${error.message}` + (seconds ? ` Try again in ${seconds} s.` : "");
    }
    case "missing_session":
    case "invalid_session":
      return `${error.message} Sign in again.`;
    default:
      return error.message;
  }
}

function showError(error) {
  const box = $("#error");
  box.replaceChildren();
  const strong = document.createElement("strong");
  strong.textContent = error instanceof ApiError ? `${error.status} ${error.code}` : "Network error";
  const text = document.createElement("p");
  text.textContent = explain(error);
  box.append(strong, text);
  if (error instanceof ApiError && error.requestId) {
    const id = document.createElement("p");
    id.className = "muted";
    id.textContent = `Request id: ${error.requestId}`;
    box.append(id);
  }
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").replaceChildren();
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const when = (iso) => (iso ? dateFormat.format(new Date(iso)) : "—");

function cell(row, label, value, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (value instanceof Node) td.append(value);
  else td.textContent = value;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function expiry(key) {
  if (!key.expires_at) return ["never", ""];
  const left = new Date(key.expires_at) - Date.now();
  if (key.replaced_by) {
    // A rolled key: its expiry is the end of its grace period.
    if (key.status === "expired") return [`stopped working ${when(key.expires_at)} (rolled)`, "status-expired"];
    return [`stops working ${when(key.expires_at)} (rolled)`, "expiring"];
  }
  if (key.status === "expired") return [`expired ${when(key.expires_at)}`, "status-expired"];
  if (left < 7 * 24 * 3600 * 1000) return [`${when(key.expires_at)} (within a week)`, "expiring"];
  return [when(key.expires_at), ""];
}

// A table row for a key, begun with its name and preview (never its secret).
function keyRow(key) {
  const row = document.createElement("tr");
  row.dataset.keyId = key.id;
  cell(row, "Name", key.name);
  const preview = document.createElement("code");
  preview.textContent = key.key_preview;
  cell(row, "Key", preview, "preview");
  return row;
}

async function loadKeys() {
  const { data } = await api("/api/v1/keys?limit=100");
  const body = $("#keys tbody");
  body.replaceChildren();
  for (const key of data) {
    const row = keyRow(key);
    cell(row, "Status", key.replaced_by && key.status === "active" ? "active, rolled" : key.status,
      `status-${key.status}`);
    cell(row, "Tier", key.tier);
    cell(row, "Requests", key.total_requests.toLocaleString(), "num");
    cell(row, "Last used", when(key.last_used_at));
    const [text, className] = expiry(key);
    cell(row, "Expires", text, className);
    const actions = document.createElement("div");
    actions.className = "actions";
    if (key.status === "active" && !key.replaced_by) {
      actions.append(button("Roll", `Roll ${key.name}`, "secondary", () => confirmRoll(key)));
    }
    actions.append(button("Revoke", `Revoke ${key.name}`, "danger", () => confirmRevoke(key)));
    cell(row, "Actions", actions);
    body.append(row);
  }
  $("#keys-empty").hidden = data.length > 0;
}

function button(text, label, className, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = text;
  element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}

// Revoked keys, each with why: by its owner, or leaked (with where it was found, from the
// `leaked` event, when it is among the events loaded).
async function loadRevoked(events) {
  const { data } = await api("/api/v1/keys?include_revoked=true&limit=100");
  const revoked = data.filter((key) => key.status === "revoked");
  const leaks = new Map(events.filter((e) => e.type === "leaked").map((e) => [e.key_id, e]));
  const body = $("#revoked tbody");
  body.replaceChildren();
  for (const key of revoked) {
    const row = keyRow(key);
    cell(row, "Revoked", when(key.revoked_at));
    const why = document.createElement("span");
    if (key.revoked_reason === "leaked") {
      const badge = document.createElement("span");
      badge.className = "badge badge-leaked";
      badge.textContent = "leaked";
      const source = leaks.get(key.id)?.details?.source;
      why.append(badge, ` reported ${when(key.revoked_at)}` + (source ? `, found at ${source}` : ""));
    } else {
      why.textContent = "revoked by you";
    }
    cell(row, "Why", why);
    body.append(row);
  }
  $("#revoked-section").hidden = revoked.length === 0;
}

async function loadEvents() {
  const { data } = await api("/api/v1/key-events?limit=50");
  const body = $("#events tbody");
  body.replaceChildren();
  for (const event of data) {
    const row = document.createElement("tr");
    cell(row, "When", when(event.occurred_at));
    cell(row, "Event", event.type.replace("_", " "));
    cell(row, "Key", `${event.key_name} (${event.key_preview})`);
    const details = Object.entries(event.details || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    cell(row, "Details", details || "—");
    body.append(row);
  }
  $("#events-empty").hidden = data.length > 0;
  return data;
}

async function refresh() {
  try {
    await loadKeys();
    await loadRevoked(await loadEvents());
    $("#session").textContent = "Signed in.";
    $("#signin").hidden = true;
    $("#mint").hidden = false;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      $("#session").textContent = "Not signed in.";
      $("#signin").hidden = false;
      $("#mint").hidden = true;
      return;
    }
    showError(error);
  }
}

async function mint(event) {
  event.preventDefault();
  clearError();
  const button = $("#mint-button");
  const body = { name: $("#name").value };
  if ($("#expires").value) body.expires_in_days = Number($("#expires").value);
  button.disabled = true;
  try {
    const { data, meta } = await api("/api/v1/keys", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    showSecret(data, meta);
    $("#mint-form").reset();
    await refresh();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

function showSecret(data, meta) {
  $("#secret-name").textContent = data.name;
  $("#secret-warning").textContent = meta.warning;
  $("#secret-hint").textContent = meta.name_hint || "";
  $("#secret-hint").hidden = !meta.name_hint;
  $("#secret-value").textContent = data.full_key;
  $("#secret-rolled").hidden = true;
  $("#copied").textContent = "";
  $("#secret").hidden = false;
  $("#secret").focus();
}

function hideSecret() {
  $("#secret-value").textContent = "";
  $("#secret-rolled").textContent = "";
  $("#secret").hidden = true;
  $("#name").focus();
}

async function copySecret() {
  const secret = $("#secret-value").textContent;
  try {
    await navigator.clipboard.writeText(secret);
    $("#copied").textContent = "Copied.";
  } catch {
    // No clipboard permission (an insecure origin, say): select it for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents($("#secret-value"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("#copied").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

// Open a confirmation dialog about `key`; run `action` if it closes with the button valued `confirmed`.
function confirmThen(dialogId, key, confirmed, action) {
  const dialog = $(`#${dialogId}`);
  $(`#${dialogId}-name`).textContent = `${key.name} (${key.key_preview})`;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== confirmed) return;
    clearError();
    try {
      await action();
    } catch (error) {
      showError(error);
    }
  };
  dialog.showModal();
}

function confirmRevoke(key) {
  confirmThen("confirm", key, "revoke", async () => {
    await api(`/api/v1/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
    await refresh();
  });
}

function confirmRoll(key) {
  confirmThen("roll", key, "roll", async () => {
    const { data, meta } = await api(`/api/v1/keys/${encodeURIComponent(key.id)}/roll`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ grace_period_minutes: Number($("#roll-grace").value) }),
    });
    showSecret(data, meta);
    const stops = meta.rolled_from.expires_at;
    $("#secret-rolled").textContent = new Date(stops) <= Date.now()
      ? `The old key (${key.key_preview}) stopped working now.`
      : `The old key (${key.key_preview}) keeps working until ${when(stops)}; deploy this one before then.`;
    $("#secret-rolled").hidden = false;
    await refresh();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#mint-form").addEventListener("submit", mint);
  $("#copy").addEventListener("click", copySecret);
  $("#secret-done").addEventListener("click", hideSecret);
  refresh();
});
