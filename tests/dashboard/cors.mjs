// Drives Debian's headless Chromium (playwright-core, no downloaded browser) for tests/e2e/cors.rs: a page of each
// origin in `pages` calls the API at another origin with `fetch`, as a single-page application does, and this
// prints, per page, what its script could read. The Rust test makes the assertions; this script only observes.
//
// Usage: node cors.mjs <plan.json>, where plan.json is
//   { "chromium": "/usr/bin/chromium", "api": "http://127.0.0.1:PORT", "token": "<bearer token>",
//     "pages": ["http://127.0.0.1:PAGE_PORT", ...] }
import { readFileSync } from "node:fs";
import { launch } from "./browser.mjs";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));

const browser = await launch(plan.chromium);
const results = {};
try {
  for (const origin of plan.pages) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${origin}/`, { waitUntil: "load" });
    results[origin] = await page.evaluate(calls, { api: plan.api, token: plan.token });
    await context.close();
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(results));

// Runs in the page. Each call records what the page's script can read, or the error fetch threw.
async function calls({ api, token }) {
  const bearer = { Authorization: `Bearer ${token}` };
  const attempt = async (read) => {
    try {
      return await read();
    } catch (error) {
      return { error: String(error) };
    }
  };
  const out = {};
  out.me = await attempt(async () => {
    const res = await fetch(`${api}/api/v1/me`, { headers: bearer });
    await res.json();
    return { status: res.status, ratelimit: res.headers.get("RateLimit"), requestId: res.headers.get("x-request-id") };
  });
  out.created = await attempt(async () => {
    const res = await fetch(`${api}/api/v1/documents`, {
      method: "POST",
      headers: { ...bearer, "Content-Type": "application/json", "Idempotency-Key": "cors-page-1" },
      body: JSON.stringify({ title: "Written from a page", docType: "guidance" }),
    });
    await res.json();
    return { status: res.status, location: res.headers.get("Location"), etag: res.headers.get("ETag") };
  });
  if (out.created.location) {
    out.patched = await attempt(async () => {
      const res = await fetch(new URL(out.created.location, api), {
        method: "PATCH",
        headers: { ...bearer, "Content-Type": "application/merge-patch+json", "If-Match": out.created.etag },
        body: JSON.stringify({ summary: "edited" }),
      });
      await res.json();
      return { status: res.status };
    });
  }
  // A file the browser may cache (the reference page's, `max-age=3600`), first fetched without CORS (as a
  // <link> would), then read by the script: the cached copy made for no origin must not be reused.
  out.cachedFile = await attempt(async () => {
    const url = `${api}/api/docs/swagger-ui.css`;
    await fetch(url, { mode: "no-cors", credentials: "omit" });
    const res = await fetch(url);
    return { status: res.status, bytes: (await res.text()).length };
  });
  out.refused = await attempt(async () => {
    const res = await fetch(`${api}/api/v1/me`);
    const problem = await res.json();
    return { status: res.status, code: problem.code };
  });
  return out;
}
