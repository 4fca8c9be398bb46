// The console's page: logs in, holds the live stream, and draws each
// view from model.js's rows. Lists draw only the rows in view; the live
// stream's patches redraw only the views whose items changed.

import * as m from "./model.js";

const TOKEN_KEY = "switchboard.console.token";
const PAGES = ["registry", "replicas", "health", "traffic", "tools", "servers", "connect"];
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
const state = m.emptyState();
let page = "registry";
let stream = null;
const dirty = new Set();

class Unauthorized extends Error {}

/** A fetch of the operator API with the console's credentials. */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  // A gateway's 401 (relayed from the Tools page) is about the caller's token.
  if (response.status === 401 && !response.headers.has("x-switchboard-relayed-from")) {
    showLogin("The control plane wants the admin token.");
    throw new Unauthorized();
  }
  return response;
}

async function problemOf(response) {
  try {
    const body = await response.json();
    // The control plane says {error: "…"}; a gateway {error: {message: "…"}}.
    const error = typeof body.error === "string" ? body.error : body.error?.message;
    return { error: error || `${response.status} ${response.statusText}`, field: body.field };
  } catch {
    return { error: `${response.status} ${response.statusText}` };
  }
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// === login ===

function showLogin(message) {
  generation += 1;
  if (stream) stream.abort();
  stream = null;
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const p of PAGES) $(`page-${p}`).hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("logout").hidden = true;
  setLive("off", "logged out");
  $("token").focus();
}

/** Trades a code or the admin token for a session: the browser keeps only that. */
async function startSession(proof) {
  const response = await fetch("/console/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(proof),
  });
  if (!response.ok) {
    showLogin((await problemOf(response)).error);
    throw new Unauthorized();
  }
  token = (await response.json()).token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const submit = event.target.querySelector("button[type=submit]");
  if (submit.disabled) return;
  submit.disabled = true;
  const pasted = $("token").value.trim();
  $("token").value = "";
  try {
    await startSession({ token: pasted });
    $("login").hidden = true;
    begin();
  } catch {
    // showLogin said why.
  } finally {
    submit.disabled = false;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await api("/console/logout", { method: "POST" });
  } catch {
    // Logged out either way.
  }
  showLogin("Logged out.");
});

/** A `#login=<code>` from `up`'s link: redeemed once, then removed from the address. */
async function redeemLink() {
  const found = /(?:^#|&)login=([0-9a-f]+)/.exec(location.hash);
  if (!found) return;
  history.replaceState(null, "", `${location.pathname}#/registry`);
  await startSession({ code: found[1] });
}

// === the live stream ===

function setLive(kind, text) {
  const live = $("live");
  live.className = `live ${kind}`;
  live.textContent = text;
}

/** A stream silent this long (keep-alives come every 15 s) is dead. */
const SILENT_FOR = 45000;
let generation = 0;

async function follow() {
  // One stream per page: a second start ends the first.
  stream?.abort();
  const mine = ++generation;
  let backoff = 1000;
  while (mine === generation) {
    const controller = new AbortController();
    stream = controller;
    let watchdog = setTimeout(() => controller.abort(), SILENT_FOR);
    try {
      const response = await api("/console/live", { signal: controller.signal });
      if (!response.ok) throw new Error((await problemOf(response)).error);
      const parser = new m.SseParser();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (mine !== generation) {
          controller.abort();
          return;
        }
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), SILENT_FOR);
        for (const { event, data } of parser.push(value)) {
          for (const kind of m.apply(state, event, JSON.parse(data))) dirty.add(kind);
          backoff = 1000;
          const meta = state.items.get("meta");
          setLive("on", meta ? `live · config v${meta.snapshotVersion}` : "live");
        }
        schedule();
      }
    } catch (error) {
      if (error instanceof Unauthorized) return;
      if (mine === generation) setLive("off", `reconnecting: ${error.message}`);
    } finally {
      clearTimeout(watchdog);
    }
    if (mine !== generation) return;
    setLive("off", "reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    draw();
  });
}

// === lists that draw only what is in view ===

class VirtualList {
  constructor(node, drawRow) {
    this.node = node;
    this.drawRow = drawRow;
    this.rows = [];
    /** The nodes drawn, by row key. */
    this.drawn = new Map();
    this.spacer = el("div", { "aria-hidden": "true" });
    this.spacer.style.height = "0px";
    node.append(this.spacer);
    node.setAttribute("role", "list");
    node.addEventListener("scroll", () => this.paint());
    new ResizeObserver(() => this.paint()).observe(node);
  }

  set(rows) {
    this.rows = rows;
    this.spacer.style.height = `${rows.length * this.rowHeight()}px`;
    this.paint();
  }

  rowHeight() {
    return parseFloat(getComputedStyle(this.node).getPropertyValue("--row")) || 36;
  }

  paint() {
    const height = this.rowHeight();
    const { start, end } = m.visibleWindow(this.node.scrollTop, this.node.clientHeight || 600, height, this.rows.length);
    // A row whose data did not change keeps its node: focus, hover and a
    // click in progress survive the live updates.
    const kept = new Map();
    const wanted = [];
    for (let i = start; i < end; i++) {
      const row = this.rows[i];
      const signature = JSON.stringify(row);
      let node = this.drawn.get(row.key);
      if (!node || node.signature !== signature) {
        node = this.drawRow(row);
        node.classList.add("vrow");
        node.setAttribute("role", "listitem");
        node.dataset.key = row.key;
        node.signature = signature;
      }
      // A row that moved (new calls on top) keeps its node: only its place changes.
      const top = `${i * height}px`;
      if (node.style.top !== top) node.style.top = top;
      kept.set(row.key, node);
      wanted.push(node);
    }
    this.drawn = kept;
    let cursor = this.spacer.nextSibling;
    for (const node of wanted) {
      if (node === cursor) cursor = cursor.nextSibling;
      else this.node.insertBefore(node, cursor);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
  }
}

const cell = (text, className) => el("span", { class: className, text: String(text ?? ""), title: String(text ?? "") });

// === views ===

const registryList = new VirtualList($("registry-list"), (r) => {
  const rollout = r.rollout.replicas === 0 ? "no replica" : `${r.rollout.applied}/${r.rollout.replicas} at v${r.rollout.version}`;
  return el(
    "div",
    { class: "registry-cols" },
    cell(r.name),
    cell(r.namespace),
    cell(r.transport),
    cell(r.validation === "Refused" ? "–" : r.enabled ? "yes" : "no"),
    cell(r.validation === "Refused" ? "–" : `${r.tools} / ${r.prompts} / ${r.resources}`),
    r.validation === "Accepted" ? cell("Accepted", "ok") : cell(`Refused: ${r.problem}`, "bad"),
    cell(r.validation === "Refused" ? "–" : `${r.ready}/${r.reporting} ready · ${rollout}`, r.ready < r.reporting ? "warn" : ""),
  );
});

const replicaList = new VirtualList($("replica-list"), (r) =>
  el(
    "div",
    { class: "replica-cols" },
    cell(r.id),
    cell(r.draining ? "draining" : r.connected ? "connected" : "gone", r.connected && !r.draining ? "ok" : "warn"),
    cell(r.buildVersion),
    cell(r.uptime),
    cell(r.sessions),
    cell(r.lastNack ? `v${r.ackedVersion}, refused v${r.lastNack.version}` : `v${r.ackedVersion} applied`, r.lastNack ? "bad" : ""),
    cell(r.reportAgo),
  ),
);

const healthList = new VirtualList($("health-list"), (h) => {
  const error = h.errorText;
  return el(
    "div",
    { class: "health-cols" },
    cell(h.name),
    cell(h.replica),
    cell(h.state, h.state === "ready" ? "ok" : h.state === "failed" ? "bad" : "warn"),
    cell(h.breakerText, h.breaker === "open" ? "bad" : h.breaker === "halfOpen" ? "warn" : "ok"),
    cell(h.restarts),
    cell(`${m.formatMicros(h.latencyP50Us)} / ${m.formatMicros(h.latencyP99Us)}`),
    cell(error || h.reason || "", error ? "bad" : ""),
  );
});

const callList = new VirtualList($("call-list"), (c) =>
  el(
    "div",
    { class: "call-cols" },
    el("span", {}, el("button", { type: "button", class: "quiet", onclick: () => openTrace(c.traceId), "aria-label": `Open the trace of ${c.tool} at ${new Date(c.startMs).toLocaleTimeString()}` }, new Date(c.startMs).toLocaleTimeString())),
    cell(c.caller || "(anonymous)"),
    cell(c.tool),
    cell(`${c.durationMs.toFixed(1)} ms`),
    cell(c.error ? `error: ${c.message || "failed"}` : "ok", c.error ? "bad" : "ok"),
  ),
);

function drawRegistry() {
  const rows = m.serverRows(state.items);
  const meta = state.items.get("meta") || {};
  const refused = rows.filter((r) => r.validation === "Refused").length;
  const first = rows.find((r) => r.validation === "Accepted");
  const rollout = first ? `; config v${meta.snapshotVersion} applied by ${first.rollout.applied} of ${first.rollout.replicas} replicas` : "";
  $("registry-summary").textContent = `${rows.length - refused} servers, ${refused} refused${rollout}`;
  const filter = $("registry-filter").value;
  registryList.set(rows.filter((r) => m.matchesText(filter, r.name, r.namespace, r.transport, r.validation, r.problem)));
}

function drawReplicas() {
  // Ages as shown, so a row is drawn again only when what it shows changes.
  const rows = m.replicaRows(state.items, Date.now()).map(({ uptimeMs, reportAgoMs, ...r }) => ({
    ...r,
    key: r.id,
    uptime: m.formatAge(uptimeMs),
    reportAgo: reportAgoMs === null ? "none yet" : `${m.formatAge(reportAgoMs)} ago`,
  }));
  replicaList.set(rows);
}

function drawHealth() {
  const rows = m.healthRows(state.items, Date.now());
  const open = rows.filter((r) => r.breaker === "open").length;
  const down = rows.filter((r) => r.state !== "ready").length;
  $("health-summary").textContent = `${rows.length} server copies: ${down} not ready, ${open} breakers open`;
  const filter = $("health-filter").value;
  healthList.set(rows.filter((r) => m.matchesText(filter, r.name, r.replica, r.state, r.breakerText)));
}

function chart(node, series) {
  const width = 300;
  const height = 100;
  const max = Math.max(1, ...series.flatMap((s) => s.counts));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", series.length ? series.map((s) => `${s.name}: ${s.total} calls in the last minute`).join("; ") : "no calls in the last minute");
  series.forEach((s, i) => {
    const step = width / Math.max(1, s.counts.length - 1);
    const points = s.counts.map((c, x) => `${(x * step).toFixed(1)},${(height - (c / max) * (height - 4) - 2).toFixed(1)}`).join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.setAttribute("class", `s${i}`);
    svg.append(line);
  });
  const legend = el("div", { class: "legend" }, ...series.map((s, i) => el("span", { class: `s${i}`, text: `■ ${s.name} ${(s.counts.at(-1) || 0)}/s` })));
  node.replaceChildren(svg, legend);
}

function drawCharts() {
  const now = Date.now();
  chart($("chart-server"), m.rates(state.calls, "server", now));
  chart($("chart-caller"), m.rates(state.calls, "caller", now));
}

function drawTraffic() {
  drawCharts();
  const form = $("call-filters");
  for (const field of ["caller", "server", "tool"]) {
    const select = form.elements[field];
    const known = new Set([...select.options].map((o) => o.value));
    for (const value of new Set(state.calls.map((c) => c[field]).filter(Boolean))) {
      if (!known.has(value)) select.append(el("option", { value, text: value }));
    }
  }
  const filter = Object.fromEntries(new FormData(form).entries());
  const shown = m.filterCalls(state.calls, filter);
  const missed = state.missed ? ` (${state.missed} more arrived too fast to list)` : "";
  $("calls-summary").textContent = `${shown.length} of the ${state.calls.length} most recent calls${missed}`;
  callList.set(shown.map((c) => ({ ...c, key: m.callKey(c) })));
}

async function openTrace(traceId) {
  const section = $("trace");
  section.hidden = false;
  $("trace-title").textContent = `Trace ${traceId}`;
  $("trace-tree").replaceChildren(el("p", { text: "loading…" }));
  $("span-detail").textContent = "";
  const meta = state.items.get("meta") || {};
  const link = m.traceLink(meta.traceUiUrl, traceId);
  $("trace-links").replaceChildren(link ? el("a", { href: link, target: "_blank", rel: "noopener noreferrer", text: "Open in your trace UI" }) : "");
  // A call's spans may reach the control plane in more than one export.
  let spans = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    const response = await api(`/traces/${traceId}`);
    if (response.ok) spans = (await response.json()).spans;
    else if (response.status !== 404) {
      $("trace-tree").replaceChildren(el("p", { class: "error", text: (await problemOf(response)).error }));
      return;
    }
    if (spans.length > 1) break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  if (spans.length === 0) {
    $("trace-tree").replaceChildren(el("p", { class: "error", text: "This trace is no longer in the control plane's buffer." }));
    return;
  }
  const tree = m.spanTree(spans);
  $("trace-tree").replaceChildren(
    ...tree.map((s) => {
      const bar = el("span", { class: "bar" });
      bar.style.left = `${(s.offset * 100).toFixed(2)}%`;
      bar.style.width = `${(s.width * 100).toFixed(2)}%`;
      const label = el("span", { text: `${s.name} · ${s.service}` });
      label.style.paddingLeft = `${s.depth * 16}px`;
      return el(
        "button",
        {
          type: "button",
          class: `span${s.error ? " error" : ""}`,
          role: "treeitem",
          "aria-level": String(s.depth + 1),
          onclick: () => {
            $("span-detail").textContent = JSON.stringify({ name: s.name, kind: s.kind, service: s.service, instance: s.instance, durationMs: s.durationMs, error: s.error, status: s.statusMessage, attributes: s.attributes }, null, 2);
          },
        },
        label,
        el("span", { class: "bar-track" }, bar),
        el("span", { text: `${s.durationMs.toFixed(2)} ms` }),
      );
    }),
  );
  $("trace-tree").querySelector("button")?.click();
  section.scrollIntoView({ block: "nearest" });
}

// --- tools ---

let tools = [];
let chosenTool = null;

$("tools-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadTools();
});
$("tools-filter").addEventListener("input", () => drawTools());

function callerHeaders() {
  const caller = $("caller-token").value.trim();
  return caller ? { "x-switchboard-caller-token": caller } : {};
}

async function loadTools() {
  $("tools-error").textContent = "";
  const response = await api("/console/tools", { headers: callerHeaders() });
  if (!response.ok) {
    $("tools-error").textContent = (await problemOf(response)).error;
    tools = [];
  } else {
    tools = (await response.json()).tools || [];
  }
  drawTools();
}

function drawTools() {
  const filter = $("tools-filter").value;
  const shown = tools.filter((t) => m.matchesText(filter, t.name, t.description));
  $("tool-list").replaceChildren(
    ...shown.map((t) =>
      el("li", {}, el("button", { type: "button", "aria-current": chosenTool === t.name ? "true" : false, onclick: () => chooseTool(t) }, t.name)),
    ),
  );
  if (tools.length && !shown.length) $("tool-list").replaceChildren(el("li", { text: "no tool matches" }));
}

function chooseTool(tool) {
  chosenTool = tool.name;
  drawTools();
  const fields = m.formFields(tool.inputSchema);
  const controls = new Map();
  const inputs = fields.map((f) => {
    const id = `arg-${f.name}`;
    let input;
    if (f.input === "select") input = el("select", { id, name: f.name }, el("option", { value: "", text: "" }), ...f.options.map((o) => el("option", { value: o, text: o })));
    else if (f.input === "checkbox") input = el("input", { id, name: f.name, type: "checkbox", checked: f.initial === true });
    else if (f.input === "json") input = el("textarea", { id, name: f.name, rows: "3", placeholder: "JSON" });
    else input = el("input", { id, name: f.name, type: "text", inputmode: f.input === "number" ? "decimal" : undefined, value: f.initial !== undefined ? String(f.initial) : undefined });
    controls.set(f.name, input);
    return el("div", { class: "stack" }, el("label", { for: id, text: `${f.name}${f.required ? " (required)" : ""} · ${f.type}` }), f.description ? el("small", { text: f.description }) : null, input);
  });
  const result = el("pre", { class: "detail", id: "tool-result", tabindex: "0" });
  const error = el("p", { class: "error", role: "alert" });
  const form = el(
    "form",
    {
      class: "stack",
      onsubmit: async (event) => {
        event.preventDefault();
        const values = {};
        for (const f of fields) {
          const input = controls.get(f.name);
          values[f.name] = f.input === "checkbox" ? input.checked : input.value;
        }
        const built = m.argumentsFrom(fields, values);
        if (built.error) {
          error.textContent = built.error;
          controls.get(built.field)?.focus();
          return;
        }
        error.textContent = "";
        result.textContent = "calling…";
        const response = await api("/console/tools/call", {
          method: "POST",
          headers: { "content-type": "application/json", ...callerHeaders() },
          body: JSON.stringify({ name: tool.name, arguments: built.arguments }),
        });
        const text = await response.text();
        let shown = text;
        try {
          shown = JSON.stringify(JSON.parse(text), null, 2);
        } catch {
          // Not JSON: shown as it came.
        }
        result.textContent = `${response.status} ${response.statusText}\n${shown}`;
      },
    },
    ...inputs,
    error,
    el("button", { type: "submit" }, `Call ${tool.name}`),
  );
  $("tool-detail").replaceChildren(
    el("h2", { text: tool.name }),
    el("p", { text: tool.description || "" }),
    el("details", {}, el("summary", { text: "Input schema" }), el("pre", { class: "detail", text: JSON.stringify(tool.inputSchema, null, 2) })),
    form,
    result,
  );
}

// --- servers ---

const NEW_SERVER = `apiVersion: switchboard.dev/v1alpha1
kind: McpServer
metadata:
  name: my-server
spec:
  transport:
    stdio:
      command: switchboard-gateway
      args: [demo-server]
`;
let editing = null;

function drawServers() {
  const meta = state.items.get("meta") || {};
  const servers = m.serverRows(state.items).filter((r) => r.validation === "Accepted");
  if (meta.mode === "kubernetes") {
    $("servers-mode").textContent = "The registry is this cluster's McpServer resources: change them with kubectl (kubectl apply -f server.yaml, kubectl delete mcps NAME). This page is read-only.";
  } else if (!meta.writable) {
    $("servers-mode").textContent = "Writes need the control plane's admin token: start it with --admin-token-file (switchboard-control up makes one).";
  } else {
    $("servers-mode").textContent = "Servers are files in the registry directory; saving here writes them, and the gateways apply them live.";
  }
  const canWrite = meta.mode === "directory" && meta.writable;
  $("new-server").hidden = !canWrite;
  if (editing) {
    const enabled = state.items.get(`server/${editing}`)?.enabled ?? true;
    $("server-toggle").textContent = enabled ? "Disable" : "Enable";
  }
  $("server-files").replaceChildren(
    ...servers.map((s) =>
      el("li", {}, canWrite
        ? el("button", { type: "button", "aria-current": editing === s.name ? "true" : false, onclick: () => editServer(s.name) }, `${s.name}${s.enabled ? "" : " (disabled)"}`)
        : el("span", { class: "vpad", text: `${s.name} · ${s.transport}` })),
    ),
  );
}

function paintGutter(markLine) {
  const count = $("server-yaml").value.split("\n").length;
  const lines = [];
  for (let i = 0; i < count; i++) lines.push(el("span", { class: i === markLine ? "mark" : "", text: `${i + 1}` }), "\n");
  $("server-gutter").replaceChildren(...lines);
}

$("server-yaml").addEventListener("input", () => paintGutter(null));
$("server-yaml").addEventListener("scroll", () => {
  $("server-gutter").scrollTop = $("server-yaml").scrollTop;
});

function openEditor(name, text) {
  editing = name;
  $("server-form").hidden = false;
  $("server-yaml").value = text;
  $("server-yaml-label").textContent = name ? `McpServer ${name} (YAML)` : "New McpServer (YAML)";
  $("server-error").textContent = "";
  $("server-toggle").hidden = !name;
  $("server-delete").hidden = !name;
  const enabled = name ? state.items.get(`server/${name}`)?.enabled ?? true : true;
  $("server-toggle").textContent = enabled ? "Disable" : "Enable";
  paintGutter(null);
  drawServers();
  $("server-yaml").focus();
}

$("new-server").addEventListener("click", () => openEditor(null, NEW_SERVER));

async function editServer(name) {
  const response = await api(`/servers/${encodeURIComponent(name)}`);
  if (!response.ok) {
    $("servers-mode").textContent = (await problemOf(response)).error;
    return;
  }
  openEditor(name, await response.text());
}

async function saveServer(text) {
  const response = await api(editing ? `/servers/${encodeURIComponent(editing)}` : "/servers", {
    method: editing ? "PUT" : "POST",
    headers: { "content-type": "application/yaml" },
    body: text,
  });
  if (response.ok) {
    const written = await response.json();
    $("server-error").textContent = "";
    openEditor(written.name, text);
    $("server-error").textContent = `Saved ${written.file}: the gateways apply it within a second.`;
    return;
  }
  const problem = await problemOf(response);
  const line = m.lineOfField(text, problem.field);
  $("server-error").textContent = problem.field ? `${problem.field}${line !== null ? ` (line ${line + 1})` : ""}: ${problem.error}` : problem.error;
  paintGutter(line);
}

$("server-form").addEventListener("submit", (event) => {
  event.preventDefault();
  saveServer($("server-yaml").value);
});

$("server-toggle").addEventListener("click", () => {
  const enabled = state.items.get(`server/${editing}`)?.enabled ?? true;
  const next = m.withEnabled($("server-yaml").value, !enabled);
  if (next === null) {
    $("server-error").textContent = "Set spec.enabled in the YAML by hand: spec is written in flow style.";
    return;
  }
  $("server-yaml").value = next;
  saveServer(next);
});

$("server-delete").addEventListener("click", async () => {
  if (!editing || !confirm(`Delete the McpServer ${editing}? Its file is removed and gateways stop it.`)) return;
  const response = await api(`/servers/${encodeURIComponent(editing)}`, { method: "DELETE" });
  if (response.ok) {
    editing = null;
    $("server-form").hidden = true;
    drawServers();
  } else {
    $("server-error").textContent = (await problemOf(response)).error;
  }
});

// --- connect ---

async function drawConnect() {
  const response = await api("/console/connect");
  if (!response.ok) {
    $("connect-endpoint").textContent = (await problemOf(response)).error;
    return;
  }
  const body = await response.json();
  $("connect-endpoint").textContent = `Clients reach the gateway at ${body.endpoint}${body.auth ? "; this gateway wants a caller token (SWITCHBOARD_TOKEN, or a token file for bridge clients)" : ""}.`;
  $("connect-list").replaceChildren(
    ...body.clients.map((c) => {
      const copy = (text, what) => el("button", {
        type: "button",
        class: "quiet",
        onclick: async (event) => {
          try {
            await navigator.clipboard.writeText(text);
            event.target.textContent = "Copied";
          } catch {
            event.target.textContent = "Select and copy";
          }
        },
      }, `Copy ${what}`);
      return el(
        "section",
        { class: "snippet", "aria-label": c.client },
        el("header", {}, el("h2", { text: c.client }), el("span", { class: "row" }, copy(c.config, "config"), copy(c.command, "command"))),
        el("p", {}, "In ", el("code", { text: `~/${c.file}` }), ", or run:"),
        el("pre", { tabindex: "0" }, el("code", { text: c.command })),
        el("pre", { tabindex: "0" }, el("code", { text: c.config })),
      );
    }),
  );
}

// === pages ===

function route() {
  const wanted = location.hash.replace(/^#\/?/, "");
  page = PAGES.includes(wanted) ? wanted : "registry";
  for (const p of PAGES) $(`page-${p}`).hidden = p !== page;
  for (const link of document.querySelectorAll("#tabs a")) {
    if (link.getAttribute("href") === `#/${page}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const kind of ["server", "replica", "health", "calls", "meta"]) dirty.add(kind);
  if (page === "connect") drawConnect();
  schedule();
}

function draw() {
  if (!$("login").hidden) return;
  const changed = (...kinds) => kinds.some((k) => dirty.has(k));
  if (page === "registry" && changed("server", "issue", "health", "replica", "meta")) drawRegistry();
  if (page === "replicas" && changed("replica")) drawReplicas();
  if (page === "health" && changed("health", "replica")) drawHealth();
  if (page === "traffic" && changed("calls")) drawTraffic();
  else if (page === "traffic" && changed("clock")) drawCharts();
  if (page === "servers" && changed("server", "meta")) drawServers();
  dirty.clear();
}

window.addEventListener("hashchange", route);
$("registry-filter").addEventListener("input", drawRegistry);
$("health-filter").addEventListener("input", drawHealth);
$("call-filters").addEventListener("input", drawTraffic);
$("call-filters").addEventListener("submit", (event) => event.preventDefault());
// Ages, breaker countdowns and the charts move with the clock.
setInterval(() => {
  if (page === "traffic") dirty.add("clock");
  if (page === "health") dirty.add("health");
  if (page === "replicas") dirty.add("replica");
  schedule();
}, 1000);

function begin() {
  $("logout").hidden = !token;
  route();
  follow();
}

redeemLink().then(begin, (error) => {
  if (!(error instanceof Unauthorized)) setLive("off", error.message);
});
