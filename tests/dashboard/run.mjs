// Drives Debian's headless Chromium (playwright-core, no downloaded browser) through the usage dashboard for
// tests/e2e/dashboard.rs, and prints one JSON object with what each session saw: the figures and tables the page
// shows, whether each chart drew, every URL the browser asked for, axe-core's violations, console errors, and the
// screenshots it saved. The Rust test makes the assertions; this script only observes.
//
// Usage: node run.mjs <plan.json>, where plan.json is
//   { "chromium": "/usr/bin/chromium", "origin": "http://127.0.0.1:PORT", "outDir": "...",
//     "sessions": [{ "name", "token" (null: stop at the sign-in form), "hash", "axe", "screenshot", "viewport",
//                    "hover" }] }
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { launch } from "./browser.mjs";

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));

const browser = await launch(plan.chromium);
const results = {};
try {
  for (const session of plan.sessions) {
    results[session.name] = await run(session);
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(results));

async function run(session) {
  const viewport = session.viewport ?? { width: 1280, height: 900 };
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1, locale: "en-GB", timezoneId: "UTC" });
  const page = await context.newPage();
  const requests = [];
  const consoleErrors = [];
  page.on("request", (request) => requests.push(request.url()));
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(`pageerror: ${error.message}`));
  const result = { requests, consoleErrors };
  try {
    await page.goto(`${plan.origin}/api/dashboard/${session.hash ?? ""}`, { waitUntil: "load" });
    await page.locator("#sign-in-local").waitFor({ state: "visible", timeout: 20_000 });
    result.signInShown = true;
    if (session.token) {
      // Signs in as a developer would: pastes the token into the form.
      await page.locator("#dev-token").fill(session.token);
      await page.getByRole("button", { name: "Use this token" }).click();
      await page.locator("body[data-ready='true']").waitFor({ state: "attached", timeout: 30_000 });
      // The charts finish drawing on the next animation frame.
      await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    }
    Object.assign(result, await page.evaluate(observe));
    if (session.hover) result.hover = await hover(page, session.hover);
    if (session.axe) {
      // page.evaluate runs over the DevTools protocol, which the page's CSP does not govern (an inline script would be).
      await page.evaluate(AXE_SOURCE);
      const axe = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
      result.axe = axe.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")) }));
    }
    if (session.screenshot) {
      const path = join(plan.outDir, session.screenshot);
      await page.screenshot({ path, fullPage: true });
      result.screenshot = path;
    }
  } catch (error) {
    result.error = String(error?.stack ?? error);
    try {
      result.html = await page.content();
    } catch {
      /* the page is gone */
    }
  } finally {
    await context.close();
  }
  return result;
}

// In the page: what it shows.
function observe() {
  const visible = (node) => !!node && node.getClientRects().length > 0 && !node.closest("[hidden]");
  const figures = {};
  for (const node of document.querySelectorAll("[data-figure]")) {
    if (visible(node)) figures[node.dataset.figure] = { value: node.dataset.value ?? null, text: node.textContent.trim() };
  }
  const tables = {};
  for (const table of document.querySelectorAll("[data-table]")) {
    if (table.closest("[hidden]")) continue;
    const head = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    const rows = [...table.querySelectorAll("tbody tr")]
      .filter((tr) => tr.children.length === head.length)
      .map((tr) => [...tr.children].map((cell) => (cell.dataset.value !== undefined ? Number(cell.dataset.value) : cell.textContent.trim())));
    tables[table.dataset.table] = { head, rows };
  }
  const charts = {};
  for (const container of document.querySelectorAll("[data-chart]")) {
    if (container.closest("[hidden]")) continue;
    const canvas = container.querySelector("canvas");
    let painted = 0;
    if (canvas && canvas.width > 0 && canvas.height > 0) {
      const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted += 1;
    }
    charts[container.dataset.chart] = {
      drawn: container.dataset.drawn === "true",
      width: canvas?.width ?? 0,
      paintedPixels: painted,
      xSpanSeconds: container.dataset.xSpan === undefined ? null : Number(container.dataset.xSpan),
    };
  }
  const refusal = document.querySelector("#refusal");
  return {
    figures,
    tables,
    charts,
    refusal: visible(refusal) ? refusal.textContent.trim() : null,
    tenantViewShown: visible(document.querySelector("#tenant-view")),
    platformViewShown: visible(document.querySelector("#platform-view")),
    overflowsHorizontally: document.documentElement.scrollWidth > window.innerWidth + 1,
    title: document.title,
  };
}

// Moves the pointer over the middle of a chart and reads the legend: the numbers shown on hover.
async function hover(page, chart) {
  const over = page.locator(`[data-chart="${chart}"] .u-over`);
  const box = await over.boundingBox();
  if (!box) return { values: [] };
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(resolve)));
  const values = await page.locator(`[data-chart="${chart}"] .u-legend .u-value`).allTextContents();
  return { values };
}
