// The key page: list, mint (optionally restricted), edit, roll, revoke and audit API keys with the session cookie, the way the
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

// Times as 2026-12-05 14:03 UTC: in the browser's time zone, always named (GMT+9, EST, ...).
const timeParts = new Intl.DateTimeFormat("en-US", {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  timeZoneName: "short",
});

function when(iso) {
  if (!iso) return "—";
  const part = Object.fromEntries(timeParts.formatToParts(new Date(iso)).map(({ type, value }) => [type, value]));
  return `${part.year}-${part.month}-${part.day} ${part.hour}:${part.minute} ${part.timeZoneName}`;
}

// A <time> for a table cell: the time as `when` writes it, the instant itself in `datetime`.
function timeElement(iso) {
  if (!iso) return "—";
  const element = document.createElement("time");
  element.dateTime = iso;
  element.textContent = when(iso);
  return element;
}

// The rule minting's meta.name_hint follows, as the server put it in the page.
const poorName = document.body.dataset.poorName ? new RegExp(document.body.dataset.poorName, "i") : null;
const devLogin = document.body.dataset.devLogin === "on";
// Each tier's scopes, as the server put them in the page; the signed-in account's tier.
const tierScopes = document.body.dataset.tierScopes ? JSON.parse(document.body.dataset.tierScopes) : {};
let accountTier = null;

// Checkboxes for `scopes` in `fieldset`, those in `checked` ticked (and ticked again on a form reset).
function scopeChoices(fieldset, scopes, checked) {
  fieldset.querySelectorAll("label").forEach((label) => label.remove());
  for (const scope of scopes) {
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = scope;
    box.checked = box.defaultChecked = checked.includes(scope);
    label.append(box, scope);
    fieldset.append(label);
  }
}

function chosenScopes(fieldset) {
  return [...fieldset.querySelectorAll("input:checked")].map((box) => box.value);
}

function addresses(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

function sameList(a, b) {
  return a.length === b.length && a.every((item, i) => item === b[i]);
}

// A key's scopes as shown: those in force, and any it was granted that its tier no longer grants.
function scopesText(key) {
  if (key.granted_scopes === null) return `all of ${key.tier} (${key.scopes.length})`;
  const lapsed = key.granted_scopes.filter((scope) => !key.scopes.includes(scope));
  return key.scopes.join(", ") + (lapsed.length ? ` (not in force on ${key.tier}: ${lapsed.join(", ")})` : "");
}

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

// A table row for a key, begun with its name and preview (never its secret); with `flagPoor`, a
// name the naming convention calls useless for audit trails is flagged, as minting it was.
function keyRow(key, flagPoor = false) {
  const row = document.createElement("tr");
  row.dataset.keyId = key.id;
  const name = cell(row, "Name", key.name);
  if (flagPoor && poorName && poorName.test(key.name)) {
    const badge = document.createElement("span");
    badge.className = "badge badge-poor";
    badge.textContent = "poor name";
    badge.title = document.body.dataset.nameHint;
    const hint = document.createElement("span");
    hint.className = "visually-hidden";
    hint.textContent = document.body.dataset.nameHint;
    name.append(" ", badge, hint);
  }
  const preview = document.createElement("code");
  preview.textContent = key.key_preview;
  cell(row, "Key", preview, "preview");
  return row;
}

// Bumped by a sign-out: an answer to a request made before it (a refresh still in flight) is
// dropped rather than put back on the page the sign-out cleared.
let pageGeneration = 0;

class StaleAnswer extends Error {}

async function current(request, generation) {
  const answer = await request;
  if (generation !== pageGeneration) throw new StaleAnswer();
  return answer;
}

async function loadKeys(generation) {
  const { data, meta } = await current(api("/api/v1/keys?limit=100"), generation);
  const body = $("#keys tbody");
  body.replaceChildren();
  for (const key of data) {
    const row = keyRow(key, true);
    cell(row, "Status", key.replaced_by && key.status === "active" ? "active, rolled" : key.status,
      `status-${key.status}`);
    cell(row, "Tier", key.tier);
    cell(row, "Scopes", scopesText(key), key.granted_scopes === null ? "" : "restricted");
    cell(row, "Allowed from", key.allowed_ips === null ? "anywhere" : key.allowed_ips.join(", "),
      key.allowed_ips === null ? "" : "restricted");
    cell(row, "Requests", key.total_requests.toLocaleString(), "num");
    cell(row, "Last used", timeElement(key.last_used_at));
    const [text, className] = expiry(key);
    cell(row, "Expires", text, className);
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(button("Edit", `Edit ${key.name}`, "secondary", () => editKey(key)));
    if (key.status === "active" && !key.replaced_by) {
      actions.append(button("Roll", `Roll ${key.name}`, "secondary", () => confirmRoll(key)));
    }
    actions.append(button("Revoke", `Revoke ${key.name}`, "danger", () => confirmRevoke(key)));
    cell(row, "Actions", actions);
    body.append(row);
  }
  $("#keys-empty").hidden = data.length > 0;
  $("#keys-wrap").hidden = data.length === 0;
  return meta.account;
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
async function loadRevoked(events, generation) {
  const { data } = await current(api("/api/v1/keys?include_revoked=true&limit=100"), generation);
  const revoked = data.filter((key) => key.status === "revoked");
  const leaks = new Map(events.filter((e) => e.type === "leaked").map((e) => [e.key_id, e]));
  const body = $("#revoked tbody");
  body.replaceChildren();
  for (const key of revoked) {
    const row = keyRow(key);
    cell(row, "Revoked", timeElement(key.revoked_at));
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

async function loadEvents(generation) {
  const { data } = await current(api("/api/v1/key-events?limit=50"), generation);
  const body = $("#events tbody");
  body.replaceChildren();
  for (const event of data) {
    const row = document.createElement("tr");
    cell(row, "When", timeElement(event.occurred_at));
    cell(row, "Event", event.type.replace("_", " "));
    cell(row, "Key", `${event.key_name} (${event.key_preview})`);
    // Times (`expires_at` of a roll) as every other time on the page: in the reader's zone.
    const details = Object.entries(event.details || {})
      .map(([k, v]) => `${k}: ${k.endsWith("_at") && typeof v === "string" ? when(v)
        : Array.isArray(v) ? v.join(" ") : v === null ? "none" : v}`).join(", ");
    cell(row, "Details", details || "—");
    body.append(row);
  }
  $("#events-empty").hidden = data.length > 0;
  return data;
}

function showSignedIn(account) {
  const user = document.createElement("strong");
  user.textContent = account.user_id;
  $("#session").replaceChildren("Signed in as ", user, ` (${account.tier} tier).`);
  if (account.tier !== accountTier) {  // the choices at mint: the tier's scopes, all ticked
    accountTier = account.tier;
    scopeChoices($("#mint-scopes"), tierScopes[account.tier] || [], tierScopes[account.tier] || []);
  }
  $("#signout").hidden = false;
  $("#signout-note").hidden = true;
  $("#signin").hidden = true;
  $("#mint").hidden = false;
  $("#keys-section").hidden = false;
  $("#events-section").hidden = false;
}

function showSignedOut() {
  $("#session").textContent = "Not signed in.";
  $("#signout").hidden = true;
  $("#signin").hidden = false;
  $("#signin-dev").hidden = !devLogin;
  $("#signin-elsewhere").hidden = devLogin;
  $("#mint").hidden = true;
  $("#keys-section").hidden = true;
  $("#revoked-section").hidden = true;
  $("#events-section").hidden = true;
}

async function refresh() {
  const generation = pageGeneration;
  try {
    const account = await loadKeys(generation);
    await loadRevoked(await loadEvents(generation), generation);
    showSignedIn(account);
  } catch (error) {
    if (error instanceof StaleAnswer) return;  // signed out meanwhile
    if (error instanceof ApiError && error.status === 401) {
      showSignedOut();
      return;
    }
    showError(error);
  }
}

// Sign out. The session cookie is HttpOnly, out of any page's reach: the development server's
// /dev/logout clears it; elsewhere the page forgets what it shows, expires what cookies it can,
// and says how the session ends if it still stands.
async function signOut() {
  if (devLogin) {
    window.location.assign("/dev/logout");
    return;
  }
  pageGeneration += 1;
  clearError();
  hideSecret();
  for (const table of ["#keys", "#revoked", "#events"]) $(`${table} tbody`).replaceChildren();
  for (const name of ["sb-access-token", "sb-refresh-token"]) document.cookie = `${name}=; Max-Age=0; Path=/`;
  showSignedOut();
  const note = $("#signout-note");
  try {
    await api("/api/v1/keys?limit=1");
    note.textContent = "This page cannot end your session: its sb-access-token cookie is HttpOnly, set by your "
      + "sign-in, and no page can remove it. Sign out of SOC Defenders where you signed in, or close the "
      + "browser; the session also ends when its token expires. Reload this page to see your keys again.";
    $("#signin").hidden = true;
    $("#session").textContent = "Still signed in: this page has forgotten your keys, not your session.";
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      showError(error);
      return;
    }
    note.textContent = "Signed out.";
  }
  note.hidden = false;
}

async function mint(event) {
  event.preventDefault();
  clearError();
  const button = $("#mint-button");
  const body = { name: $("#name").value };
  if ($("#expires").value) body.expires_in_days = Number($("#expires").value);
  const scopes = chosenScopes($("#mint-scopes"));
  if (!sameList(scopes, tierScopes[accountTier] || [])) body.scopes = scopes;  // all ticked: the tier's full set
  const allowed = addresses($("#allowed-ips").value);
  if (allowed.length) body.allowed_ips = allowed;
  button.disabled = true;
  let minted;
  try {
    minted = await api("/api/v1/keys", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (error) {
    showError(error);
    return;
  } finally {
    // As soon as the mint is answered, not after the list is reloaded: a disabled button
    // would swallow the next Enter in the form (no implicit submission) while it loads.
    button.disabled = false;
  }
  showSecret(minted.data, minted.meta);
  $("#mint-form").reset();
  await refresh();
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
  for (const id of ["#secret-name", "#secret-value", "#secret-hint", "#secret-rolled"]) $(id).textContent = "";
  $("#secret").hidden = true;
  if (!$("#mint").hidden) $("#name").focus();
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

// Rename a key, narrow its scopes or change its allowlist: only what changed is sent.
function editKey(key) {
  const granted = key.granted_scopes === null ? tierScopes[key.tier] || key.scopes : key.granted_scopes;
  $("#edit-key-name").value = key.name;
  scopeChoices($("#edit-scopes"), granted, granted);
  $("#edit-ips").value = (key.allowed_ips || []).join("\n");
  confirmThen("edit", key, "save", async () => {
    const body = {};
    const name = $("#edit-key-name").value;
    if (name !== key.name) body.name = name;
    const scopes = chosenScopes($("#edit-scopes"));
    if (!sameList(scopes, granted)) body.scopes = scopes;
    const allowed = addresses($("#edit-ips").value);
    if (!sameList(allowed, key.allowed_ips || [])) body.allowed_ips = allowed.length ? allowed : null;
    if (Object.keys(body).length === 0) return;
    await api(`/api/v1/keys/${encodeURIComponent(key.id)}`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    await refresh();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#mint-form").addEventListener("submit", mint);
  $("#copy").addEventListener("click", copySecret);
  $("#secret-done").addEventListener("click", hideSecret);
  $("#signout").addEventListener("click", signOut);
  $("#mint-first").addEventListener("click", (event) => {
    event.preventDefault();
    $("#name").focus();
  });
  refresh();
});
