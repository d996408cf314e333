// Borough's operator console. Everything goes through the admin API (/admin/v1/...), the
// same routes curl uses, with the session cookie and the CSRF token on every change.
// No framework, no build step; text is only ever set as text (never as HTML).
"use strict";

const state = { csrf: null, events: null, flash: null };

// ---- DOM helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function $(id) { return document.getElementById(id); }

let fieldCounter = 0;
function field(label, input, hint) {
  const id = input.id || `f${++fieldCounter}`;
  input.id = id;
  return el("div", { class: "field" }, el("label", { for: id }, label), input,
    hint ? el("p", { class: "hint" }, hint) : null);
}

function notice(text, kind) {
  const box = $("notice");
  box.textContent = text;
  box.className = kind || "info";
  box.hidden = !text;
}

function errorBox() {
  return el("p", { class: "error", role: "alert", hidden: true });
}

function showError(box, error) {
  box.textContent = error.message;
  box.hidden = false;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function pretty(value) { return JSON.stringify(value, null, 2); }

// ---- The admin API -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body, headers) {
  const init = { method, credentials: "same-origin", headers: Object.assign({}, headers) };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { detail: "the gateway cannot be reached: " + e.message });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (e) { data = text; }
  }
  if (!response.ok) {
    if (response.status === 401 && path !== "/console/session") signedOut("Your session has ended: sign in again.");
    throw new ApiError(response.status, typeof data === "object" ? data : { detail: String(data || response.statusText) });
  }
  return { data, headers: response.headers, status: response.status };
}

const enc = encodeURIComponent;

// ---- Sign-in ---------------------------------------------------------------------------

function signedOut(message) {
  state.csrf = null;
  stopLive();
  $("nav").hidden = true;
  $("view").hidden = true;
  $("sign-in").hidden = false;
  notice(message || "", message ? "warn" : "info");
  $("token").focus();
}

function signedIn(session) {
  state.csrf = session.csrf_token;
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("view").hidden = false;
  notice("");
  if (!location.hash || location.hash === "#") location.hash = "#/tenants";
  else route();
}

async function signIn(event) {
  event.preventDefault();
  const box = $("sign-in-error");
  box.hidden = true;
  try {
    const { data } = await api("POST", "/console/session", { token: $("token").value });
    $("token").value = "";
    signedIn(data);
  } catch (e) {
    showError(box, e);
  }
}

async function signOut() {
  try { await api("DELETE", "/console/session"); } catch (e) { /* ended anyway */ }
  location.hash = "";
  signedOut("Signed out.");
}

// ---- Routing -------------------------------------------------------------------------

// Navigates to `hash`, showing `message` on the page it opens.
function go(hash, message) {
  state.flash = message;
  if (location.hash === hash) route();
  else location.hash = hash;
}

function stopLive() {
  if (state.events) { state.events.close(); state.events = null; }
}

function route() {
  if (!state.csrf) return;
  stopLive();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = $("view");
  view.replaceChildren();
  for (const link of document.querySelectorAll("#nav a")) {
    link.toggleAttribute("aria-current", link.dataset.section === parts[0]);
  }
  // A message for the page navigated to (set by `go`), else none.
  notice(state.flash || "", "info");
  state.flash = null;
  if (parts[0] === "tenants" && parts[1]) tenantPage(view, parts[1]);
  else if (parts[0] === "tenants") tenantsPage(view);
  else if (parts[0] === "config" && parts[1] === "platform" && parts[2]) namespacePage(view, { kind: "platform", service: parts[2] }, parts[3]);
  else if (parts[0] === "config" && parts[1] === "tenant" && parts[2] && parts[3]) namespacePage(view, { kind: "tenant", tenant: parts[2], name: parts[3] }, parts[4]);
  else if (parts[0] === "config") configPage(view);
  else if (parts[0] === "status") statusPage(view);
  else tenantsPage(view);
  $("main").focus();
}

// ---- Tenants -------------------------------------------------------------------------

function shownOnce(key) {
  const input = el("input", { value: key, readonly: true, class: "secret", "aria-label": "The new API key" });
  const copy = el("button", {
    type: "button", onclick: async () => {
      try { await navigator.clipboard.writeText(key); copy.textContent = "Copied"; }
      catch (e) { input.select(); copy.textContent = "Press Ctrl+C"; }
    }
  }, "Copy");
  return el("div", { class: "card once", role: "alert" },
    el("p", {}, el("strong", {}, "The API key, shown this once: "), "store it now."),
    el("div", { class: "row" }, input, copy));
}

async function tenantsPage(view) {
  view.append(el("h1", {}, "Tenants"));
  const created = el("div", {});
  const createError = errorBox();
  const name = el("input", { required: true, maxlength: 64, autocomplete: "off", pattern: "[a-z0-9]([a-z0-9\\-]*[a-z0-9])?" });
  const placement = el("select", {},
    el("option", { value: "shared" }, "shared (row-level security)"),
    el("option", { value: "schema" }, "schema of its own"),
    el("option", { value: "database" }, "database of its own"));
  const url = el("input", { type: "password", autocomplete: "off", placeholder: "postgres://…" });
  const urlField = field("Database URL (empty: Borough creates the database)", url,
    "Stored sealed; never shown again.");
  urlField.hidden = true;
  placement.addEventListener("change", () => { urlField.hidden = placement.value !== "database"; });
  const form = el("form", {
    class: "card", onsubmit: async (event) => {
      event.preventDefault();
      createError.hidden = true;
      const body = { name: name.value.trim(), placement: placement.value };
      if (placement.value === "database" && url.value.trim()) body.database_url = url.value.trim();
      try {
        const { data } = await api("POST", "/admin/v1/tenants", body);
        created.replaceChildren(
          el("p", {}, "Created ", el("a", { href: `#/tenants/${enc(data.tenant.id)}` }, data.tenant.name), "."),
          shownOnce(data.api_key.key));
        name.value = ""; url.value = "";
        load(null);
      } catch (e) { showError(createError, e); }
    }
  }, el("h2", {}, "New tenant"), field("Name", name, "Lowercase letters, digits and -, 1 to 64."),
    field("Placement", placement), urlField,
    createError, el("button", { type: "submit" }, "Create tenant"));

  const search = el("input", { type: "search", placeholder: "name starts with…", autocomplete: "off" });
  const table = el("tbody", {});
  const listError = errorBox();
  const more = el("button", { type: "button", hidden: true }, "Next page");
  let cursor = null;
  async function load(from) {
    listError.hidden = true;
    const params = new URLSearchParams({ limit: "20" });
    if (search.value.trim()) params.set("q", search.value.trim());
    if (from) params.set("cursor", from);
    try {
      const { data } = await api("GET", `/admin/v1/tenants?${params}`);
      if (!from) table.replaceChildren();
      for (const t of data.items) {
        table.append(el("tr", {},
          el("td", {}, el("a", { href: `#/tenants/${enc(t.id)}` }, t.name)),
          el("td", {}, t.placement), el("td", {}, el("span", { class: `badge ${t.status}` }, t.status)),
          el("td", {}, when(t.created_at)), el("td", { class: "mono" }, t.id)));
      }
      if (!table.children.length) {
        table.append(el("tr", {}, el("td", { colspan: 5, class: "empty" },
          search.value.trim() ? "No tenant's name starts with that." : "No tenants yet: create the first one above.")));
      }
      cursor = data.next_cursor;
      more.hidden = !cursor;
    } catch (e) { showError(listError, e); }
  }
  more.addEventListener("click", () => load(cursor));
  let debounce = null;
  search.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(() => load(null), 250); });
  view.append(form, created,
    el("h2", {}, "All tenants"), field("Search", search), listError,
    el("table", {}, el("caption", { class: "sr-only" }, "Tenants"),
      el("thead", {}, el("tr", {}, ["Name", "Placement", "Status", "Created", "Id"].map((h) => el("th", { scope: "col" }, h)))),
      table), more);
  await load(null);
}

async function tenantPage(view, id) {
  const error = errorBox();
  view.append(el("p", {}, el("a", { href: "#/tenants" }, "← Tenants")), error);
  let tenant;
  try {
    tenant = (await api("GET", `/admin/v1/tenants/${enc(id)}`)).data;
  } catch (e) { showError(error, e); return; }
  view.append(el("h1", {}, tenant.name),
    el("dl", { class: "facts" },
      el("dt", {}, "Id"), el("dd", { class: "mono" }, tenant.id),
      el("dt", {}, "Placement"), el("dd", {}, tenant.placement),
      el("dt", {}, "Status"), el("dd", {}, el("span", { class: `badge ${tenant.status}` }, tenant.status)),
      el("dt", {}, "Created"), el("dd", {}, when(tenant.created_at))));

  // Keys
  const issued = el("div", {});
  const keyError = errorBox();
  const keys = el("tbody", {});
  function drawKeys(list) {
    keys.replaceChildren();
    for (const k of list) {
      const revoke = k.revoked_at ? "revoked " + when(k.revoked_at) : el("button", {
        type: "button", class: "danger", "aria-label": `Revoke key ${k.prefix}`, onclick: async () => {
          if (!confirm(`Revoke the key ${k.prefix}…? It stops working at once.`)) return;
          try { await api("DELETE", `/admin/v1/tenants/${enc(id)}/api-keys/${enc(k.id)}`); reloadKeys(); }
          catch (e) { showError(keyError, e); }
        }
      }, "Revoke");
      keys.append(el("tr", {}, el("td", { class: "mono" }, k.prefix + "…"), el("td", {}, when(k.created_at)), el("td", {}, revoke)));
    }
    if (!list.length) keys.append(el("tr", {}, el("td", { colspan: 3, class: "empty" }, "No keys.")));
  }
  async function reloadKeys() {
    try { drawKeys((await api("GET", `/admin/v1/tenants/${enc(id)}`)).data.api_keys); }
    catch (e) { showError(keyError, e); }
  }
  drawKeys(tenant.api_keys);
  const issue = el("button", {
    type: "button", onclick: async () => {
      keyError.hidden = true;
      try {
        const { data } = await api("POST", `/admin/v1/tenants/${enc(id)}/api-keys`);
        issued.replaceChildren(shownOnce(data.key));
        reloadKeys();
      } catch (e) { showError(keyError, e); }
    }
  }, "Issue a key");
  view.append(el("section", { class: "card" }, el("h2", {}, "API keys"), issued, keyError,
    el("table", {}, el("thead", {}, el("tr", {}, ["Prefix", "Created", ""].map((h) => el("th", { scope: "col" }, h)))), keys), issue));

  // Rate limit
  const rps = el("input", { type: "number", min: 1, step: 1, required: true });
  const burst = el("input", { type: "number", min: 1, step: 1, required: true });
  const limitState = el("p", { class: "hint" });
  const limitError = errorBox();
  try {
    const { data } = await api("GET", `/admin/v1/tenants/${enc(id)}/limits`);
    rps.value = data.requests_per_second; burst.value = data.burst;
    limitState.textContent = data.source === "tenant" ? "This tenant's own limit." : "The platform default.";
  } catch (e) { showError(limitError, e); }
  view.append(el("form", {
    class: "card", onsubmit: async (event) => {
      event.preventDefault();
      limitError.hidden = true;
      try {
        await api("PUT", `/admin/v1/tenants/${enc(id)}/limits`, { requests_per_second: Number(rps.value), burst: Number(burst.value) });
        limitState.textContent = "Saved: this tenant's own limit (applied by every gateway within a second).";
      } catch (e) { showError(limitError, e); }
    }
  }, el("h2", {}, "Rate limit"), limitState, field("Requests per second", rps), field("Burst", burst), limitError,
    el("button", { type: "submit" }, "Save limit")));

  // Configuration: the namespaces it has, or a new one by name.
  const namespaces = el("ul", { class: "namespaces" });
  const nsError = errorBox();
  const ns = el("input", { pattern: "[A-Za-z0-9_.\\-]{1,64}", required: true, placeholder: "app" });
  view.append(el("section", { class: "card" }, el("h2", {}, "Configuration"), nsError, namespaces,
    el("form", {
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/config/tenant/${enc(id)}/${enc(ns.value)}`;
      }
    }, field("Namespace", ns, "An existing one, or a new name: letters, digits, _ . - (1 to 64)."),
      el("button", { type: "submit" }, "Open namespace"))));
  try {
    let cursor = null;
    do {
      const params = new URLSearchParams({ limit: "100" });
      if (cursor) params.set("cursor", cursor);
      const { data } = await api("GET", `/admin/v1/tenants/${enc(id)}/config?${params}`);
      for (const n of data.items) {
        namespaces.append(el("li", {}, el("a", { href: `#/config/tenant/${enc(id)}/${enc(n.name)}` }, n.name),
          ` — ${n.keys} key${n.keys === 1 ? "" : "s"}${n.schema ? ", with a schema" : ""}`));
      }
      cursor = data.next_cursor;
    } while (cursor && namespaces.children.length < 1000);
    if (!namespaces.children.length) namespaces.append(el("li", { class: "empty" }, "No configuration yet."));
  } catch (e) { showError(nsError, e); }

  // Suspend / purge
  const dangerError = errorBox();
  const confirmName = el("input", { autocomplete: "off" });
  const purge = el("button", { type: "submit", class: "danger", disabled: true }, "Purge tenant");
  confirmName.addEventListener("input", () => { purge.disabled = confirmName.value !== tenant.name; });
  view.append(el("section", { class: "card danger-zone" }, el("h2", {}, "Suspend or purge"),
    el("button", {
      type: "button", class: "danger", disabled: tenant.status === "suspended", onclick: async () => {
        if (!confirm(`Suspend ${tenant.name}? Its keys stop at once.`)) return;
        try { await api("DELETE", `/admin/v1/tenants/${enc(id)}`); route(); }
        catch (e) { showError(dangerError, e); }
      }
    }, "Suspend tenant"),
    el("form", {
      onsubmit: async (event) => {
        event.preventDefault();
        if (confirmName.value !== tenant.name) return;
        try {
          await api("DELETE", `/admin/v1/tenants/${enc(id)}?purge=true`);
          go("#/tenants", `${tenant.name} was purged: its data, configuration and record are gone.`);
        } catch (e) { showError(dangerError, e); }
      }
    }, field(`Type the tenant's name (${tenant.name}) to purge it: data, configuration, record`, confirmName), purge),
    dangerError));
}

// ---- Configuration ---------------------------------------------------------------------

const SERVICES = ["gateway", "user", "query", "config"];

function configPage(view) {
  view.append(el("h1", {}, "Configuration"),
    el("section", { class: "card" }, el("h2", {}, "Platform namespaces"),
      el("p", {}, "Borough's own settings, applied live by each service (docs/config.md)."),
      el("ul", {}, SERVICES.map((s) => el("li", {}, el("a", { href: `#/config/platform/${s}` }, `platform/${s}`))))),
    el("section", { class: "card" }, el("h2", {}, "Tenant namespaces"),
      el("p", {}, "Open a tenant (", el("a", { href: "#/tenants" }, "Tenants"), "), then its namespace.")));
}

function nsBase(target) {
  return target.kind === "platform"
    ? `/admin/v1/config/platform/${enc(target.service)}`
    : `/admin/v1/tenants/${enc(target.tenant)}/config/${enc(target.name)}`;
}

function nsLabel(target) {
  return target.kind === "platform" ? `platform/${target.service}` : `tenant/${target.tenant}/${target.name}`;
}

// A JSON Schema check of the common keywords, before the server's own (which decides).
function schemaErrors(schema, value, path) {
  const errors = [];
  path = path || "$";
  if (!schema || typeof schema !== "object") return errors;
  const type = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
  const types = schema.type ? [].concat(schema.type) : null;
  if (types && !types.some((t) => t === type || (t === "integer" && Number.isInteger(value)) || (t === "number" && type === "number"))) {
    errors.push(`${path}: expected ${types.join(" or ")}, got ${type}`);
    return errors;
  }
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) errors.push(`${path}: not one of ${JSON.stringify(schema.enum)}`);
  if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) errors.push(`${path}: must be ${JSON.stringify(schema.const)}`);
  if (type === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push(`${path}: below ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) errors.push(`${path}: above ${schema.maximum}`);
  }
  if (type === "string") {
    if (schema.minLength !== undefined && value.length < schema.minLength) errors.push(`${path}: shorter than ${schema.minLength}`);
    if (schema.maxLength !== undefined && value.length > schema.maxLength) errors.push(`${path}: longer than ${schema.maxLength}`);
  }
  if (type === "object") {
    for (const key of schema.required || []) if (!(key in value)) errors.push(`${path}: "${key}" is required`);
    for (const [key, sub] of Object.entries(schema.properties || {})) if (key in value) errors.push(...schemaErrors(sub, value[key], `${path}.${key}`));
    if (schema.additionalProperties === false) {
      for (const key of Object.keys(value)) if (!(key in (schema.properties || {}))) errors.push(`${path}: "${key}" is not allowed`);
    }
  }
  if (type === "array" && schema.items) value.forEach((item, i) => errors.push(...schemaErrors(schema.items, item, `${path}[${i}]`)));
  return errors;
}

// Lines of `a` and `b`, with what was removed and added (longest common subsequence).
function lineDiff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const n = x.length, m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
    lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push(["-", x[i++]]);
    else out.push(["+", y[j++]]);
  }
  while (i < n) out.push(["-", x[i++]]);
  while (j < m) out.push(["+", y[j++]]);
  return out;
}

function diffView(before, after) {
  const a = before === null || before === undefined ? "" : pretty(before);
  const b = after === null || after === undefined ? "" : pretty(after);
  return el("pre", { class: "diff", "aria-label": "Differences" },
    lineDiff(a, b).map(([op, line]) => el("span", { class: op === "+" ? "add" : op === "-" ? "del" : "same" }, `${op} ${line}\n`)));
}

async function namespacePage(view, target, selectedKey) {
  const base = nsBase(target);
  const back = target.kind === "platform" ? el("a", { href: "#/config" }, "← Configuration")
    : el("a", { href: `#/tenants/${enc(target.tenant)}` }, "← Tenant");
  view.append(el("p", {}, back), el("h1", {}, nsLabel(target)));
  const listError = errorBox();
  const entries = el("tbody", {});
  let schema = null;

  // The schema editor.
  const schemaText = el("textarea", { rows: 6, spellcheck: false, class: "mono" });
  const schemaError = errorBox();
  const schemaForm = el("form", {
    class: "card", onsubmit: async (event) => {
      event.preventDefault();
      schemaError.hidden = true;
      let parsed;
      try { parsed = schemaText.value.trim() ? JSON.parse(schemaText.value) : null; }
      catch (e) { showError(schemaError, new Error("Not JSON: " + e.message)); return; }
      try {
        await api("PUT", `${base}:schema`, parsed);
        schema = parsed;
        notice(parsed === null ? "Schema removed." : "Schema saved: every value put from now on must satisfy it.", "info");
      } catch (e) { showError(schemaError, e); }
    }
  }, el("h2", {}, "Schema"), field("JSON Schema of this namespace (empty: none)", schemaText), schemaError,
    el("button", { type: "submit" }, "Save schema"));

  // The key editor.
  const key = el("input", { required: true, pattern: "[A-Za-z0-9_.\\-]{1,128}", autocomplete: "off" });
  const value = el("textarea", { rows: 8, spellcheck: false, class: "mono", required: true });
  const editorError = errorBox();
  const conflict = el("div", {});
  let loadedRevision = null;
  const history = el("div", {});
  const editor = el("form", {
    class: "card", onsubmit: async (event) => {
      event.preventDefault();
      editorError.hidden = true;
      conflict.replaceChildren();
      let parsed;
      try { parsed = JSON.parse(value.value); }
      catch (e) { showError(editorError, new Error("Not valid JSON: " + e.message)); return; }
      const problems = schemaErrors(schema, parsed);
      if (problems.length) { showError(editorError, new Error("The namespace's schema refuses it: " + problems.join("; "))); return; }
      const headers = loadedRevision ? { "If-Match": `"${loadedRevision}"` } : { "If-None-Match": "*" };
      try {
        const { data } = await api("PUT", `${base}/${enc(key.value)}`, value.value, headers);
        loadedRevision = data.revision;
        notice(`Saved ${key.value} at revision ${data.revision}.`, "info");
        loadList();
        loadHistory(key.value);
      } catch (e) {
        if (e.status === 412) {
          try {
            const { data } = await api("GET", `${base}/${enc(key.value)}`);
            conflict.replaceChildren(el("div", { class: "card warn", role: "alert" },
              el("p", {}, `Changed meanwhile: revision ${data.revision} by ${data.updated_by} at ${when(data.updated_at)}. The newer value:`),
              el("pre", { class: "mono" }, pretty(data.value)),
              el("button", { type: "button", onclick: () => { openKey(data); conflict.replaceChildren(); } }, "Load the newer value")));
          } catch (e2) { showError(editorError, e2); }
        } else showError(editorError, e);
      }
    }
  }, el("h2", {}, "Edit a key"), field("Key", key), field("Value (JSON)", value), editorError, conflict,
    el("div", { class: "row" }, el("button", { type: "submit" }, "Save"),
      el("button", { type: "button", onclick: () => { key.value = ""; value.value = ""; loadedRevision = null; history.replaceChildren(); key.focus(); } }, "New key")));

  function openKey(entry) {
    key.value = entry.key;
    value.value = pretty(entry.value);
    loadedRevision = entry.revision;
    loadHistory(entry.key);
  }

  async function loadHistory(name) {
    history.replaceChildren(el("h2", {}, `History of ${name}`));
    try {
      const { data } = await api("GET", `${base}/${enc(name)}/history?limit=50`);
      if (!data.items.length) { history.append(el("p", { class: "empty" }, "No history.")); return; }
      const rows = el("tbody", {});
      const diff = el("div", {});
      for (const change of data.items) {
        rows.append(el("tr", {},
          el("td", {}, change.revision), el("td", {}, change.op), el("td", {}, change.actor), el("td", {}, when(change.at)),
          el("td", {}, el("button", { type: "button", onclick: () => diff.replaceChildren(el("h3", {}, `Revision ${change.revision}: before → after`), diffView(change.old_value, change.new_value)) }, "Diff"),
            " ",
            change.new_value === null ? null : el("button", {
              type: "button", onclick: async () => {
                if (!confirm(`Roll ${name} back to its value at revision ${change.revision}?`)) return;
                try {
                  const { data: entry } = await api("POST", `${base}/${enc(name)}:rollback`, { revision: change.revision });
                  notice(`Rolled ${name} back to revision ${change.revision} (now revision ${entry.revision}).`, "info");
                  openKey(entry);
                  loadList();
                } catch (e) { showError(editorError, e); }
              }
            }, "Roll back to this"))));
      }
      // Any two revisions side by side: the value each left the key with.
      const valueAt = new Map(data.items.map((c) => [String(c.revision), c.new_value]));
      const options = () => data.items.map((c) => el("option", { value: c.revision }, `${c.revision} (${c.op})`));
      const from = el("select", {}, options()), to = el("select", {}, options());
      if (data.items.length > 1) from.value = String(data.items[1].revision);
      const compare = el("form", {
        class: "row compare", onsubmit: (event) => {
          event.preventDefault();
          diff.replaceChildren(el("h3", {}, `Revision ${from.value} → revision ${to.value}`),
            diffView(valueAt.get(from.value), valueAt.get(to.value)));
        }
      }, field("From revision", from), field("To revision", to), el("button", { type: "submit" }, "Compare"));
      history.append(el("table", {}, el("thead", {}, el("tr", {}, ["Revision", "Change", "By", "At", ""].map((h) => el("th", { scope: "col" }, h)))), rows),
        compare, diff);
    } catch (e) { history.append(el("p", { class: "error" }, e.message)); }
  }

  async function loadList() {
    listError.hidden = true;
    try {
      const { data } = await api("GET", `${base}?limit=200`);
      entries.replaceChildren();
      for (const entry of data.items) {
        entries.append(el("tr", {},
          el("td", {}, el("button", { type: "button", class: "link", onclick: () => openKey(entry) }, entry.key)),
          el("td", { class: "mono preview" }, JSON.stringify(entry.value)),
          el("td", {}, entry.revision), el("td", {}, entry.updated_by), el("td", {}, when(entry.updated_at))));
        if (entry.key === selectedKey && loadedRevision === null) openKey(entry);
      }
      if (!data.items.length) entries.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No keys yet: add one below.")));
    } catch (e) { showError(listError, e); }
  }

  view.append(listError,
    el("table", {}, el("caption", { class: "sr-only" }, "Keys"),
      el("thead", {}, el("tr", {}, ["Key", "Value", "Revision", "By", "Updated"].map((h) => el("th", { scope: "col" }, h)))), entries),
    editor, history, schemaForm);
  try {
    const { data } = await api("GET", `${base}:schema`);
    schema = data.schema;
    schemaText.value = schema === null ? "" : pretty(schema);
  } catch (e) { showError(schemaError, e); }
  await loadList();
}

// ---- Live status -------------------------------------------------------------------------

function statusPage(view) {
  const updated = el("p", { class: "hint", role: "status" }, "Connecting…");
  const config = el("tbody", {}), backends = el("tbody", {}), routes = el("tbody", {});
  const error = errorBox();
  view.append(el("h1", {}, "Live status"), updated, error,
    el("h2", {}, "Config clients"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Instance", "Service", "Applied revision", "Lag", "Last report"].map((h) => el("th", { scope: "col" }, h)))), config),
    el("h2", {}, "Backends (this gateway)"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Backend", "Endpoint", "Health", "Circuit"].map((h) => el("th", { scope: "col" }, h)))), backends),
    el("h2", {}, "Routes"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Method", "Route", "Requests/s", "5xx", "4xx", "p99", "Total"].map((h) => el("th", { scope: "col" }, h)))), routes));
  const pct = (r) => `${(r * 100).toFixed(1)} %`;
  function draw(s) {
    updated.textContent = `Updated ${when(s.at)} (every 2 s, over the last ${s.window_seconds.toFixed(1)} s).`;
    error.hidden = !s.config_error;
    if (s.config_error) error.textContent = "The config service cannot be asked: " + s.config_error;
    config.replaceChildren(...(s.config ? s.config.instances : []).map((i) => el("tr", {},
      el("td", { class: "mono" }, i.instance), el("td", {}, i.service), el("td", {}, i.applied_revision),
      el("td", { class: i.lag > 0 ? "warn" : "" }, i.lag), el("td", {}, when(i.last_seen)))));
    if (!config.children.length) config.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No config client has reported.")));
    backends.replaceChildren(...s.backends.flatMap((b) => (b.endpoints.length ? b.endpoints : [null]).map((e) => el("tr", {},
      el("td", {}, b.name), el("td", { class: "mono" }, e ? e.address : "none discovered"),
      el("td", {}, e ? el("span", { class: `badge ${e.healthy ? "active" : "failed"}` }, e.healthy ? "healthy" : "failing") : "—"),
      el("td", {}, e ? el("span", { class: `badge breaker-${e.breaker}` }, e.breaker) : "—")))));
    routes.replaceChildren(...s.routes.map((r) => el("tr", {},
      el("td", {}, r.method), el("td", { class: "mono" }, r.route), el("td", {}, r.requests_per_second.toFixed(1)),
      el("td", { class: r.error_ratio > 0 ? "warn" : "" }, pct(r.error_ratio)), el("td", {}, pct(r.client_error_ratio)),
      el("td", {}, r.p99_ms === null ? "—" : `${r.p99_ms.toFixed(1)} ms`), el("td", {}, r.requests_total))));
    if (!routes.children.length) routes.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No requests yet.")));
  }
  const events = new EventSource("/admin/v1/status:watch");
  state.events = events;
  events.addEventListener("status", (event) => { try { draw(JSON.parse(event.data)); } catch (e) { /* next one */ } });
  events.addEventListener("error", () => { updated.textContent = "Reconnecting…"; });
}

// ---- Start -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  try {
    const { data } = await api("GET", "/console/session");
    signedIn(data);
  } catch (e) {
    signedOut("");
  }
});
