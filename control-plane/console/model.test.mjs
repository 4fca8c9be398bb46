// Unit tests of the console's logic (node --test), run by the e2e suite's
// `console::frontend_logic` test.
import assert from "node:assert/strict";
import test from "node:test";

import * as m from "./model.js";

test("SSE events split across chunks come out whole", () => {
  const parser = new m.SseParser();
  assert.deepEqual(parser.push("event: patch\ndata: {\"set\""), []);
  assert.deepEqual(parser.push(":{}}\n\n: keep-alive\n\nevent: calls\r\ndata: a\r\ndata: b\r\n\r\n"), [
    { event: "patch", data: "{\"set\":{}}" },
    { event: "calls", data: "a\nb" },
  ]);
  assert.equal(parser.buffer, "");
});

test("a reset replaces the state, patches change only their keys", () => {
  const state = m.emptyState();
  m.apply(state, "reset", { items: { meta: { snapshotVersion: 1 }, "server/a": { name: "a" } }, calls: [] });
  const touched = m.apply(state, "patch", { set: { "health/r0/a": { name: "a" } }, del: ["server/a"] });
  assert.deepEqual([...touched].sort(), ["health", "server"]);
  assert.deepEqual([...state.items.keys()].sort(), ["health/r0/a", "meta"]);
});

test("calls arrive newest first and are capped", () => {
  const state = m.emptyState();
  m.apply(state, "reset", { items: {}, calls: [{ spanId: "a", startMs: 5 }] });
  const batch = [{ spanId: "b", startMs: 6 }, { spanId: "c", startMs: 9 }, { spanId: "a", startMs: 5 }, { spanId: "d", startMs: 5 }];
  m.apply(state, "calls", { calls: batch, missed: 2 });
  assert.deepEqual(state.calls.map((c) => c.spanId), ["c", "b", "d", "a"], "the reset's call is not listed twice; a parallel one is");
  assert.equal(state.missed, 2);
  m.apply(state, "calls", { calls: Array.from({ length: m.MAX_CALLS + 10 }, (_, i) => ({ spanId: `s${i}`, startMs: 100 + i })), missed: 0 });
  assert.equal(state.calls.length, m.MAX_CALLS);
  m.apply(state, "reset", { items: {}, calls: [] });
  assert.equal(state.missed, 0, "a reset starts the count again");
});

function items(entries) {
  return new Map(Object.entries(entries));
}

test("registry rows count the most any replica reports and show rollout and refusals", () => {
  const rows = m.serverRows(
    items({
      meta: { snapshotVersion: 7 },
      "server/b": { name: "b", namespace: "b", transport: "stdio", enabled: true },
      "replica/r0": { id: "r0", connected: true, ackedVersion: 7 },
      "replica/r1": { id: "r1", connected: true, ackedVersion: 6 },
      "replica/old": { id: "old", connected: false, ackedVersion: 1 },
      "health/r0/b": { name: "b", state: "ready", toolCount: 3, promptCount: 1, resourceCount: 0 },
      "health/r1/b": { name: "b", state: "failed", toolCount: 0, promptCount: 2, resourceCount: 4 },
      "issue/0": { source: "bad.yaml", resource: "bad", field: "spec.transport", message: "unknown transport" },
    }),
  );
  assert.equal(rows[0].validation, "Refused");
  assert.equal(rows[0].problem, "spec.transport: unknown transport");
  const b = rows[1];
  assert.deepEqual([b.tools, b.prompts, b.resources], [3, 2, 4]);
  assert.deepEqual([b.ready, b.reporting], [1, 2]);
  assert.deepEqual(b.rollout, { applied: 1, replicas: 2, version: 7 });
});

test("health puts open breakers and failures first and counts the breaker down", () => {
  const rows = m.healthRows(
    items({
      "health/r0/a": { name: "a", state: "ready", breaker: "closed" },
      "health/r0/b": { name: "b", state: "failed", breaker: "closed" },
      "health/pod-x/c": { name: "c", state: "ready", breaker: "open", breakerRetryAt: 10_500 },
    }),
    1_000,
  );
  assert.deepEqual(rows.map((r) => r.name), ["c", "b", "a"]);
  assert.equal(rows[0].replica, "pod-x");
  assert.equal(rows[0].breakerText, "open, 10 s left");
  assert.equal(m.breakerText({ breaker: "halfOpen" }, 0), "half-open");
  assert.equal(m.breakerText({ breaker: "open", breakerRetryAt: 500 }, 1_000), "open, next call is a trial");
});

test("rates bucket calls per second by server, busiest first", () => {
  const now = 100_999;
  const calls = [
    { startMs: 100_100, server: "a" },
    { startMs: 100_200, server: "a" },
    { startMs: 99_000, server: "b" },
    { startMs: 10_000, server: "a" },
  ];
  const series = m.rates(calls, "server", now, 3);
  assert.deepEqual(series.map((s) => [s.name, s.counts]), [
    ["a", [0, 0, 2]],
    ["b", [0, 1, 0]],
  ]);
});

test("call filters combine", () => {
  const calls = [
    { caller: "x", server: "a", tool: "a.echo", error: false },
    { caller: "y", server: "a", tool: "a.add", error: true, message: "boom" },
  ];
  assert.equal(m.filterCalls(calls, { outcome: "error" }).length, 1);
  assert.equal(m.filterCalls(calls, { caller: "x", outcome: "error" }).length, 0);
  assert.equal(m.filterCalls(calls, { text: "BOOM" })[0].caller, "y");
  assert.equal(m.filterCalls(calls, { text: "  " }).length, 2, "blank text filters nothing");
  assert.ok(m.matchesText("ech", "a.echo") && !m.matchesText("x", null, undefined));
});

test("a span tree nests children under parents in start order", () => {
  const span = (id, parent, start, ms) => ({ spanId: id, parentSpanId: parent, startTimeUnixNano: start, durationMs: ms, name: id });
  const tree = m.spanTree([span("c2", "root", 3e6, 1), span("root", "", 0, 10), span("c1", "root", 1e6, 1), span("g", "c1", 1.5e6, 0.1)]);
  assert.deepEqual(tree.map((s) => [s.name, s.depth]), [["root", 0], ["c1", 1], ["g", 2], ["c2", 1]]);
  assert.equal(tree[0].offset, 0);
  assert.equal(tree[0].width, 1);
  assert.ok(Math.abs(tree[3].offset - 0.3) < 1e-9);
});

test("trace links need a template and a real trace id", () => {
  const id = "0123456789abcdef0123456789abcdef";
  assert.equal(m.traceLink("http://j/trace/{trace_id}", id), `http://j/trace/${id}`);
  assert.equal(m.traceLink(null, id), null);
  assert.equal(m.traceLink("http://j/{trace_id}", "../x"), null);
});

test("the try-it form types its fields and refuses bad input", () => {
  const fields = m.formFields({
    type: "object",
    required: ["text", "n"],
    properties: {
      text: { type: "string" },
      n: { type: "integer" },
      loud: { type: "boolean" },
      mode: { type: "string", enum: ["a", "b"] },
      extra: { type: "object" },
    },
  });
  assert.deepEqual(fields.map((f) => f.input), ["text", "number", "checkbox", "select", "json"]);
  assert.deepEqual(m.argumentsFrom(fields, { text: "hi", n: "3", loud: true, extra: "{\"k\":1}" }), {
    arguments: { text: "hi", n: 3, loud: true, extra: { k: 1 } },
  });
  assert.equal(m.argumentsFrom(fields, { n: "3" }).field, "text");
  assert.equal(m.argumentsFrom(fields, { text: "x", n: "1.5" }).error, "n must be an integer");
  assert.equal(m.argumentsFrom(fields, { text: "x", n: "1", extra: "{" }).field, "extra");
});

test("a wrong field is found on its line, or its nearest ancestor's", () => {
  const yaml = "apiVersion: v1\nmetadata:\n  name: x\nspec:\n  # comment\n  transport:\n    stdio:\n      command: ''\n";
  assert.equal(m.lineOfField(yaml, "spec.transport.stdio.command"), 7);
  assert.equal(m.lineOfField(yaml, "spec.transport.http.url"), 5);
  assert.equal(m.lineOfField(yaml, "metadata.name"), 2);
  assert.equal(m.lineOfField(yaml, "nothing.here"), null);
  const flow = "metadata: {}\nspec:\n  name: x\n";
  assert.equal(m.lineOfField(flow, "metadata.name"), 0, "not the name under spec");
  const nested = "spec:\n  transport:\n    enabled: x\n  enabled: true\n";
  assert.equal(m.lineOfField(nested, "spec.enabled"), 3, "a direct child, not a deeper key");
});

test("disabling a server edits spec.enabled only, keeping the rest as written", () => {
  const yaml = "kind: McpServer\nspec:  # the spec\n    transport:\n      stdio:\n        enabled: x\n    enabled: true # on\n";
  assert.equal(
    m.withEnabled(yaml, false),
    "kind: McpServer\nspec:  # the spec\n    transport:\n      stdio:\n        enabled: x\n    enabled: false # on\n",
  );
  assert.equal(
    m.withEnabled("spec:\n    transport: {}\n", false),
    "spec:\n    enabled: false\n    transport: {}\n",
    "added at the block's own indentation",
  );
  assert.equal(m.withEnabled("spec: {transport: {}}\n", false), null, "flow style is left to the user");
});

test("a virtual window covers the view and its overscan, within bounds", () => {
  assert.deepEqual(m.visibleWindow(0, 360, 36, 5000, 2), { start: 0, end: 12 });
  assert.deepEqual(m.visibleWindow(36 * 100, 360, 36, 5000, 2), { start: 98, end: 112 });
  assert.deepEqual(m.visibleWindow(36 * 4999, 360, 36, 5000, 2), { start: 4997, end: 5000 });
});
