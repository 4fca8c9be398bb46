// The console's logic without the page: the live stream's parser and
// state, the views' rows, rates, filters, span trees, the "try it" form
// from a tool's schema, and list windowing. Pure functions over plain
// data, so `node --test` checks them (control-plane/console/tests/).

/** Splits Server-Sent Events out of text as it arrives; keeps the rest. */
export class SseParser {
  constructor() {
    this.buffer = "";
  }

  /** Adds a chunk; returns the complete events in it: {event, data}. */
  push(chunk) {
    this.buffer += chunk.replace(/\r\n?/g, "\n");
    const events = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) !== -1) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line === "" || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length > 0) events.push({ event, data: data.join("\n") });
    }
    return events;
  }
}

/** Most calls kept in memory for the traffic view. */
export const MAX_CALLS = 2000;

/** What the console knows: items by key and recent calls, newest first. */
export function emptyState() {
  return { items: new Map(), calls: [], missed: 0 };
}

/** What tells calls apart: their own span. */
export const callKey = (call) => `${call.traceId}/${call.spanId}`;

/** Applies one stream event; returns the keys' prefixes that changed. */
export function apply(state, event, data) {
  const touched = new Set();
  if (event === "reset") {
    state.items = new Map(Object.entries(data.items));
    state.calls = (data.calls || []).slice(0, MAX_CALLS);
    state.missed = 0;
    return new Set(["meta", "server", "issue", "replica", "health", "calls"]);
  }
  if (event === "patch") {
    for (const [key, value] of Object.entries(data.set || {})) {
      state.items.set(key, value);
      touched.add(key.split("/")[0]);
    }
    for (const key of data.del || []) {
      state.items.delete(key);
      touched.add(key.split("/")[0]);
    }
  } else if (event === "calls") {
    // A call may come both in a reset and in the batch after it.
    const known = new Set(state.calls.slice(0, 500).map(callKey));
    const fresh = data.calls.filter((c) => !known.has(callKey(c))).sort((a, b) => b.startMs - a.startMs);
    state.calls = fresh.concat(state.calls).slice(0, MAX_CALLS);
    state.missed += data.missed || 0;
    touched.add("calls");
  }
  return touched;
}

function ofKind(items, prefix) {
  const out = [];
  for (const [key, value] of items) {
    if (key.startsWith(prefix)) out.push([key, value]);
  }
  return out;
}

/** Connected replicas first, then by id. */
export function replicaRows(items, now) {
  return ofKind(items, "replica/")
    .map(([, r]) => ({
      ...r,
      uptimeMs: r.startedAt ? Math.max(0, now - r.startedAt) : null,
      reportAgoMs: r.reportedAt ? Math.max(0, now - r.reportedAt) : null,
    }))
    .sort((a, b) => Number(b.connected) - Number(a.connected) || a.id.localeCompare(b.id));
}

/**
 * The registry: each server with its counts (the most any replica
 * reports), its state across replicas and the rollout of the current
 * version; then each refused document as a row of its own.
 */
export function serverRows(items) {
  const meta = items.get("meta") || {};
  const version = meta.snapshotVersion || 0;
  const replicas = ofKind(items, "replica/")
    .map(([, r]) => r)
    .filter((r) => r.connected);
  const applied = replicas.filter((r) => r.ackedVersion >= version).length;
  const rows = ofKind(items, "server/").map(([, s]) => {
    const health = replicas
      .map((r) => items.get(`health/${r.id}/${s.name}`))
      .filter(Boolean);
    const most = (field) => health.reduce((m, h) => Math.max(m, h[field] || 0), 0);
    const ready = health.filter((h) => h.state === "ready").length;
    return {
      key: `server/${s.name}`,
      name: s.name,
      namespace: s.namespace,
      transport: s.transport,
      enabled: s.enabled,
      source: s.source || "",
      validation: "Accepted",
      problem: "",
      tools: most("toolCount"),
      prompts: most("promptCount"),
      resources: most("resourceCount"),
      ready,
      reporting: health.length,
      rollout: { applied, replicas: replicas.length, version },
    };
  });
  rows.sort((a, b) => a.name.localeCompare(b.name));
  const issues = ofKind(items, "issue/").map(([key, i]) => ({
    key,
    name: i.resource || i.source,
    namespace: "",
    transport: "",
    enabled: false,
    source: i.source,
    validation: "Refused",
    problem: i.field ? `${i.field}: ${i.message}` : i.message,
    field: i.field || "",
    tools: 0,
    prompts: 0,
    resources: 0,
    ready: 0,
    reporting: 0,
    rollout: { applied, replicas: replicas.length, version },
  }));
  return issues.concat(rows);
}

/** Every server on every replica, worst first, then by server. */
export function healthRows(items, now) {
  const rank = { failed: 0, starting: 1, unknown: 2, ready: 3 };
  return ofKind(items, "health/")
    .map(([key, h]) => {
      const replica = key.slice("health/".length, key.length - h.name.length - 1);
      const errorText = h.lastError ? `${h.lastError} (${formatAge(Math.max(0, now - h.lastErrorAt))} ago)` : "";
      return { key, replica, ...h, breakerText: breakerText(h, now), errorText };
    })
    .sort(
      (a, b) =>
        Number(b.breaker === "open") - Number(a.breaker === "open") ||
        (rank[a.state] ?? 2) - (rank[b.state] ?? 2) ||
        a.name.localeCompare(b.name) ||
        a.replica.localeCompare(b.replica),
    );
}

/** "open, 12 s left", "half-open", "closed". */
export function breakerText(health, now) {
  switch (health.breaker) {
    case "open": {
      if (!health.breakerRetryAt) return "open";
      // The replica's clock against this one's: a countdown, not a promise.
      const left = Math.ceil((health.breakerRetryAt - now) / 1000);
      return left > 0 ? `open, ${left} s left` : "open, next call is a trial";
    }
    case "halfOpen":
      return "half-open";
    default:
      return health.breaker || "unknown";
  }
}

/** Whether any of `values` holds the typed `filter` text (any case); none typed: yes. */
export function matchesText(filter, ...values) {
  const text = (filter || "").trim().toLowerCase();
  return !text || values.some((v) => String(v ?? "").toLowerCase().includes(text));
}

/** Calls matching every filter given (caller, server, tool, outcome, text). */
export function filterCalls(calls, filter) {
  return calls.filter(
    (c) =>
      (!filter.caller || c.caller === filter.caller) &&
      (!filter.server || c.server === filter.server) &&
      (!filter.tool || c.tool === filter.tool) &&
      (!filter.outcome || (filter.outcome === "error") === c.error) &&
      matchesText(filter.text, c.caller, c.server, c.tool, c.message),
  );
}

/**
 * Calls per second over the last `seconds`, by `field` (server or
 * caller): the busiest `top` series, each a list of per-second counts,
 * oldest first.
 */
export function rates(calls, field, now, seconds = 60, top = 5) {
  const end = Math.floor(now / 1000);
  const series = new Map();
  for (const call of calls) {
    const age = end - Math.floor(call.startMs / 1000);
    if (age < 0 || age >= seconds) continue;
    const name = call[field] || "(anonymous)";
    if (!series.has(name)) series.set(name, new Array(seconds).fill(0));
    series.get(name)[seconds - 1 - age] += 1;
  }
  return [...series.entries()]
    .map(([name, counts]) => ({
      name,
      counts,
      total: counts.reduce((a, b) => a + b, 0),
    }))
    .sort((a, b) => b.total - a.total || a.name.localeCompare(b.name))
    .slice(0, top);
}

/**
 * A trace's spans as a tree in display order: each with its depth and
 * its start and length as fractions of the whole trace.
 */
export function spanTree(spans) {
  if (spans.length === 0) return [];
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    if (span.parentSpanId && ids.has(span.parentSpanId)) {
      if (!children.has(span.parentSpanId)) children.set(span.parentSpanId, []);
      children.get(span.parentSpanId).push(span);
    } else {
      roots.push(span);
    }
  }
  const start = Math.min(...spans.map((s) => s.startTimeUnixNano));
  const end = Math.max(...spans.map((s) => s.startTimeUnixNano + s.durationMs * 1e6));
  const whole = Math.max(end - start, 1);
  const byStart = (a, b) => a.startTimeUnixNano - b.startTimeUnixNano;
  const out = [];
  const visit = (span, depth) => {
    out.push({
      ...span,
      depth,
      offset: (span.startTimeUnixNano - start) / whole,
      width: Math.max((span.durationMs * 1e6) / whole, 0.002),
    });
    for (const child of (children.get(span.spanId) || []).sort(byStart)) visit(child, depth + 1);
  };
  for (const root of roots.sort(byStart)) visit(root, 0);
  return out;
}

/** The operator's trace UI link for a trace, or null without a template. */
export function traceLink(template, traceId) {
  if (!template || !/^[0-9a-f]{32}$/.test(traceId)) return null;
  return template.split("{trace_id}").join(traceId);
}

/**
 * The "try it" form's fields from a tool's input schema: one per
 * property, typed; what the form cannot type is edited as JSON.
 */
export function formFields(schema) {
  const properties = (schema && schema.properties) || {};
  const required = new Set((schema && schema.required) || []);
  return Object.entries(properties).map(([name, p]) => {
    const type = Array.isArray(p.type) ? p.type.find((t) => t !== "null") : p.type;
    let input = "json";
    if (Array.isArray(p.enum) && p.enum.every((v) => typeof v === "string")) input = "select";
    else if (type === "string") input = "text";
    else if (type === "integer" || type === "number") input = "number";
    else if (type === "boolean") input = "checkbox";
    return {
      name,
      input,
      type: type || "any",
      required: required.has(name),
      description: p.description || "",
      options: input === "select" ? p.enum : [],
      initial: p.default !== undefined ? p.default : undefined,
    };
  });
}

/**
 * The arguments a filled form gives: `values` by field name, as the
 * inputs hold them (strings, or booleans for checkboxes). Returns
 * {arguments} or {error, field}.
 */
export function argumentsFrom(fields, values) {
  const args = {};
  for (const field of fields) {
    const raw = values[field.name];
    const empty = raw === undefined || raw === "";
    if (empty) {
      if (field.required) return { error: `${field.name} is required`, field: field.name };
      continue;
    }
    switch (field.input) {
      case "checkbox":
        args[field.name] = Boolean(raw);
        break;
      case "number": {
        const n = Number(raw);
        if (!Number.isFinite(n) || (field.type === "integer" && !Number.isInteger(n))) {
          return { error: `${field.name} must be ${field.type === "integer" ? "an integer" : "a number"}`, field: field.name };
        }
        args[field.name] = n;
        break;
      }
      case "json":
        try {
          args[field.name] = JSON.parse(raw);
        } catch (e) {
          return { error: `${field.name} is not JSON: ${e.message}`, field: field.name };
        }
        break;
      default:
        args[field.name] = raw;
    }
  }
  return { arguments: args };
}

/**
 * The 0-based line of a YAML document that holds `field` (a dotted path
 * such as `spec.transport.command`, as the API names a wrong field), or
 * of its deepest ancestor there; null when not even the first part is.
 */
export function lineOfField(text, field) {
  if (!field) return null;
  const parts = field.split(".").map((p) => p.replace(/\[\d+\]$/, ""));
  const lines = text.split("\n");
  let found = null;
  let from = 0;
  let indent = -1;
  for (const part of parts) {
    let hit = null;
    let childDepth = null;
    for (let i = from; i < lines.length; i++) {
      const line = lines[i];
      if (/^\s*(#|$)/.test(line)) continue;
      const depth = line.length - line.trimStart().length;
      // Left the parent's block: the field is not under it.
      if (found !== null && depth <= indent) break;
      const key = line.trimStart().replace(/^- /, "");
      // A direct child: the first depth seen below the parent.
      if (childDepth === null && depth > indent) childDepth = depth;
      if (depth === childDepth && (key.startsWith(`${part}:`) || key.startsWith(`"${part}":`))) {
        hit = i;
        indent = depth;
        break;
      }
    }
    if (hit === null) break;
    found = hit;
    from = hit + 1;
  }
  return found;
}

/**
 * A server's YAML with `spec.enabled` set to `enabled`, the rest as
 * written (comments, order, indentation); null when `spec` is not a
 * block this can edit (flow style), to be edited by hand.
 */
export function withEnabled(text, enabled) {
  const lines = text.split("\n");
  const spec = lines.findIndex((l) => /^spec:\s*(#.*)?$/.test(l));
  if (spec === -1) return null;
  let end = spec + 1;
  while (end < lines.length && (/^\s*(#.*)?$/.test(lines[end]) || /^\s/.test(lines[end]))) end++;
  const children = lines.slice(spec + 1, end).filter((l) => !/^\s*(#.*)?$/.test(l));
  const indent = children.length ? children[0].length - children[0].trimStart().length : 2;
  const pad = " ".repeat(indent);
  for (let i = spec + 1; i < end; i++) {
    const found = new RegExp(`^${pad}enabled:\\s*[^#]*?(\\s*#.*)?$`).exec(lines[i]);
    if (found && !/^\s/.test(lines[i].slice(indent))) {
      lines[i] = `${pad}enabled: ${enabled}${found[1] || ""}`;
      return lines.join("\n");
    }
  }
  lines.splice(spec + 1, 0, `${pad}enabled: ${enabled}`);
  return lines.join("\n");
}

/** The rows of a list of `total` to draw: those in view, and `overscan` more each side. */
export function visibleWindow(scrollTop, viewport, rowHeight, total, overscan = 8) {
  const first = Math.floor(scrollTop / rowHeight);
  const start = Math.max(0, first - overscan);
  const end = Math.min(total, first + Math.ceil(viewport / rowHeight) + overscan);
  return { start, end: Math.max(start, end) };
}

/** Two digits, as the control plane rounds them: 950 µs, 2.4 ms, 12 ms, 4.5 s. */
export function formatMicros(us) {
  if (!us) return "–";
  if (us < 1000) return `${us} µs`;
  if (us < 10_000) return `${(us / 1000).toFixed(1)} ms`;
  if (us < 1e6) return `${Math.round(us / 1000)} ms`;
  return `${(us / 1e6).toFixed(1)} s`;
}

/** 40 s, 3 min, 2 h, 4 d. */
export function formatAge(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.floor(ms / 1000);
  if (s < 90) return `${s} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}
