// Drives the console in Debian's headless Chromium with playwright-core,
// as an operator would: run by the e2e test `console::in_a_real_browser`,
// which starts `switchboard-control up` and passes:
//   CONSOLE_URL   the `console:` line's URL (one-time login in its fragment)
//   SERVER        the server to break; BROKEN_FLAG a file that keeps it
//                 from starting again; SERVER_MARK what its command line
//                 alone carries
//   TRACE_UI      the --trace-ui-url template given to `up`
//   ARTIFACTS     where screenshots and the accessibility report go
// Prints one line per step; exits non-zero, naming the step, on failure.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

// The packages `.ci/test` installs into tests/npm.
const require = createRequire(new URL("../npm/package.json", import.meta.url));
const { chromium } = require("playwright-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const consoleUrl = env("CONSOLE_URL");
const server = env("SERVER");
const artifacts = env("ARTIFACTS");
fs.mkdirSync(artifacts, { recursive: true });

const STEP_TIMEOUT = 30_000;
let step = "start";
const log = (message) => console.log(`[${new Date().toISOString()}] ${message}`);
function begin(name) {
  step = name;
  log(`step: ${name}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const accessibility = [];

async function axe(page, name) {
  // Evaluated by the driver: the console's CSP refuses inline scripts, as it should.
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(axeSource);
  const result = await page.evaluate(async () => window.axe.run(document, { resultTypes: ["violations"] }));
  const serious = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  accessibility.push({ page: name, violations: result.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help })) });
  if (serious.length > 0) {
    throw new Error(`axe found serious violations on ${name}: ${JSON.stringify(serious.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.slice(0, 3).map((n) => n.target) })))}`);
  }
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: false });
}

/** Fails unless `check` (run in the page) turns true within the step timeout. */
async function until(page, what, check, arg) {
  try {
    await page.waitForFunction(check, arg, { timeout: STEP_TIMEOUT, polling: 200 });
  } catch (error) {
    const body = await page.evaluate(() => document.querySelector("main").innerText).catch(() => "");
    throw new Error(`${what}: not seen within ${STEP_TIMEOUT} ms (${error.message.split("\n")[0]})\npage text:\n${body.slice(0, 3000)}`);
  }
}

/** The pid of the one process whose command line starts with `mark`, looked up now. */
function serverPid(mark) {
  const found = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").join(" ");
      if (cmdline.startsWith(mark)) found.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  if (found.length !== 1) throw new Error(`${found.length} processes start with ${mark}`);
  return found[0];
}

const rowText = (listId) => `[...document.querySelectorAll('#${listId} [data-key]')].map((r) => r.innerText.replace(/\\s+/g, ' '))`;

try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 850 }, colorScheme: "light" });
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("console", (message) => {
    // A refusal the page shows (the 422 of a bad server) is logged by the browser too.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) errors.push(message.text());
  });

  begin("open the console with up's one-time link");
  await page.goto(consoleUrl);
  await until(page, "the login code gone from the address", () => !location.hash.includes("login="));
  await until(page, "the live stream", () => document.getElementById("live").textContent.startsWith("live"));

  begin("see the servers in the registry");
  await until(page, `${server} accepted with its tools counted`, (name) =>
    [...document.querySelectorAll("#registry-list [data-key]")].some((r) => r.innerText.includes(name) && r.innerText.includes("Accepted") && /\b1[0-9] \/ 0 \/ 0\b/.test(r.innerText)), server);
  log(`registry rows: ${JSON.stringify(await page.evaluate(rowText("registry-list")))}`);
  await axe(page, "registry");
  await shot(page, "laptop-registry");

  begin("see the replicas");
  await page.click("a[href='#/replicas']");
  await until(page, "a connected replica", () =>
    [...document.querySelectorAll("#replica-list [data-key]")].some((r) => r.innerText.includes("connected")));
  log(`replica rows: ${JSON.stringify(await page.evaluate(rowText("replica-list")))}`);
  await axe(page, "replicas");

  begin("open the breaker with calls from the Tools page");
  await page.click("a[href='#/tools']");
  await page.click("#tools-form button[type=submit]");
  await until(page, "the catalog", (name) => document.querySelector("#tool-list").innerText.includes(`${name}.fail`), server);
  await page.fill("#tools-filter", `${server}.fail`);
  await page.click(`#tool-list button:text-is("${server}.fail")`);
  await axe(page, "tools");
  for (let i = 0; i < 3; i++) {
    await page.fill("#arg-message", `broken on purpose ${i}`);
    await page.click("#tool-detail form button[type=submit]");
    await until(page, "the call's result", (i) => document.getElementById("tool-result").innerText.includes(`broken on purpose ${i}`), i);
  }
  // The page stays: a reload would lose this mark.
  await page.evaluate(() => {
    window.sameDocument = true;
  });

  begin("watch the breaker open and the killed server's state change, live");
  await page.click("a[href='#/health']");
  await until(page, "the breaker open with its time left", (name) =>
    [...document.querySelectorAll("#health-list [data-key]")].some((r) => r.innerText.includes(name) && /open, \d+ s left/.test(r.innerText)), server);
  await shot(page, "laptop-health-breaker-open");
  fs.writeFileSync(env("BROKEN_FLAG"), "broken\n");
  const pid = serverPid(env("SERVER_MARK"));
  process.kill(pid, "SIGKILL");
  log(`killed ${server} (pid ${pid})`);
  await until(page, "the killed server not ready, restarted", (name) =>
    [...document.querySelectorAll("#health-list [data-key]")].some((r) => {
      const cells = [...r.children].map((c) => c.innerText);
      return cells[0] === name && cells[2] !== "ready" && Number(cells[4]) >= 1;
    }), server);
  if (!(await page.evaluate(() => window.sameDocument === true))) throw new Error("the page reloaded");
  log(`health rows: ${JSON.stringify(await page.evaluate(rowText("health-list")))}`);
  await axe(page, "health");
  await shot(page, "laptop-health-server-down");

  begin("open a call's trace from the Traffic page");
  await page.click("a[href='#/traffic']");
  await until(page, "the calls listed", (name) =>
    [...document.querySelectorAll("#call-list [data-key]")].filter((r) => r.innerText.includes(`${name}.fail`)).length >= 3, server);
  await until(page, "a chart line for the server", (name) => document.querySelector("#chart-server").innerText.includes(name), server);
  await page.selectOption("#call-filters select[name=tool]", `${server}.fail`);
  await page.click("#call-list [data-key] button");
  await until(page, "the span tree", () => document.querySelectorAll("#trace-tree [role=treeitem]").length >= 2);
  const tree = await page.evaluate(() => [...document.querySelectorAll("#trace-tree [role=treeitem]")].map((s) => s.innerText.replace(/\s+/g, " ")));
  log(`spans: ${JSON.stringify(tree)}`);
  if (!tree.some((s) => s.includes("tools/call"))) throw new Error(`no tools/call span in ${JSON.stringify(tree)}`);
  const detail = await page.textContent("#span-detail");
  if (!detail.includes("switchboard.caller")) throw new Error(`span attributes not shown: ${detail}`);
  const traceId = (await page.textContent("#trace-title")).replace("Trace ", "").trim();
  const link = await page.getAttribute("#trace-links a", "href");
  const wanted = env("TRACE_UI").replace("{trace_id}", traceId);
  if (link !== wanted) throw new Error(`trace UI link ${link}, wanted ${wanted}`);
  await axe(page, "traffic");
  await shot(page, "laptop-traffic-trace");

  begin("a bad server is refused at its field, a good one is added and its tools appear");
  await page.click("a[href='#/servers']");
  await page.click("#new-server");
  const bad = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata:\n  name: added\nspec:\n  transport:\n    stdio:\n      command: ''\n";
  await page.fill("#server-yaml", bad);
  await page.click("#server-save");
  await until(page, "the field's error", () => /spec\.transport/.test(document.getElementById("server-error").innerText));
  await until(page, "the wrong line marked", () => document.querySelector("#server-gutter .mark") !== null);
  log(`refused: ${await page.textContent("#server-error")} (marked line ${await page.textContent("#server-gutter .mark")})`);
  await axe(page, "servers");
  await shot(page, "laptop-servers-refused");
  const good = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata:\n  name: added\nspec:\n  transport:\n    stdio:\n      command: switchboard-gateway\n      args: [demo-server]\n";
  await page.fill("#server-yaml", good);
  await page.click("#server-save");
  await until(page, "saved", () => document.getElementById("server-error").innerText.startsWith("Saved"));
  await page.click("a[href='#/registry']");
  await until(page, "the added server with tools", () =>
    [...document.querySelectorAll("#registry-list [data-key]")].some((r) => r.innerText.startsWith("added") && /\b1[0-9] \/ 0 \/ 0\b/.test(r.innerText)));
  await page.click("a[href='#/tools']");
  await page.fill("#tools-filter", "added.");
  await page.click("#tools-form button[type=submit]");
  await until(page, "the added server's tools in the catalog", () => document.querySelector("#tool-list").innerText.includes("added.echo"));
  await page.click('#tool-list button:text-is("added.echo")');
  await page.fill("#arg-text", "hello through the console");
  await page.click("#tool-detail form button[type=submit]");
  await until(page, "the tool's answer", () => /200 OK[\s\S]*hello through the console/.test(document.getElementById("tool-result").innerText));

  begin("connect: every client's config with copy buttons");
  await page.click("a[href='#/connect']");
  await until(page, "client configs", () => document.querySelectorAll("#connect-list .snippet").length >= 5);
  await page.click("#connect-list .snippet button");
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  if (!copied.includes("/mcp")) throw new Error(`the copied config has no endpoint: ${copied}`);
  await axe(page, "connect");
  await shot(page, "laptop-connect");

  begin("a phone: one column, no sideways scrolling");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click("a[href='#/registry']");
  await until(page, "registry rows on a phone", () => document.querySelectorAll("#registry-list [data-key]").length > 0);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a phone`);
  await shot(page, "phone-registry");
  await page.click("a[href='#/health']");
  await shot(page, "phone-health");

  begin("dark, as the OS says");
  await page.emulateMedia({ colorScheme: "dark" });
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const [r, g, b] = background.match(/\d+/g).map(Number);
  if (r + g + b > 150) throw new Error(`the background stays light in dark mode: ${background}`);
  await axe(page, "health (dark, phone)");
  await shot(page, "phone-health-dark");

  begin("keyboard: after a reload the session stays and Tab starts at the skip link");
  await page.setViewportSize({ width: 1366, height: 850 });
  await page.reload();
  await until(page, "the live stream after a reload", () => document.getElementById("live").textContent.startsWith("live"));
  await page.keyboard.press("Tab");
  const skip = await page.evaluate(() => document.activeElement.textContent);
  if (!skip.includes("Skip")) throw new Error(`the first Tab reaches ${skip}, not the skip link`);

  if (errors.length > 0) throw new Error(`the page logged errors: ${JSON.stringify(errors)}`);
  fs.writeFileSync(path.join(artifacts, "accessibility.json"), JSON.stringify(accessibility, null, 2));
  log("all steps passed");
  await browser.close();
} catch (error) {
  fs.writeFileSync(path.join(artifacts, "accessibility.json"), JSON.stringify(accessibility, null, 2));
  console.error(`FAILED at step "${step}": ${error.stack || error}`);
  await browser.close();
  process.exit(1);
}
