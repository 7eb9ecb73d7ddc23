// A client's day against a running Meterline, through openapi-fetch typed by the types openapi-typescript made
// from the served document (run.mjs generates them first, then type-checks this file against them).
//
// Environment:
//   METERLINE_BASE_URL           the handler's origin, e.g. http://127.0.0.1:7071
//   METERLINE_TOKEN              a bearer token with Documents.Read and Documents.Write
//   METERLINE_ADMIN_TOKEN        a bearer token with Platform.Admin
//   METERLINE_LIMITED_TOKEN      a bearer token of another tenant, which the scenario moves onto a plan of
//                                60 requests a minute with a burst of 1; it must not have called the API yet
//   METERLINE_LIMITED_DIRECTORY  that tenant's Entra directory id (the token's `tid`)
//
// Each step prints one line; the first mismatch throws and the process exits 1 with the step and what differed.
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/api.js";

type DocumentInput = components["schemas"]["DocumentInput"];
type DocumentView = components["schemas"]["DocumentView"];
type Problem = components["schemas"]["Problem"];
type AzureErrorResponse = components["schemas"]["AzureErrorResponse"];

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

/** The error body as the typed problem model: the document says errors come as Problem or the Azure envelope. */
function asProblem(error: Problem | AzureErrorResponse | undefined, response: Response, what: string): Problem {
  check(error !== undefined, `${what}: HTTP ${response.status} without an error body`);
  const contentType = response.headers.get("content-type");
  check(contentType === "application/problem+json", `${what}: Content-Type ${contentType}, not application/problem+json`);
  check("type" in error && "code" in error, `${what}: not a problem: ${JSON.stringify(error)}`);
  check(error.status === response.status, `${what}: problem status ${error.status} on HTTP ${response.status}`);
  return error;
}

function expectStatus(response: Response, status: number, what: string, body?: unknown): void {
  check(response.status === status, `${what}: HTTP ${response.status}, expected ${status}: ${JSON.stringify(body)}`);
}

const base = env("METERLINE_BASE_URL");
// problem+json first: the Azure envelope is for clients that ask for application/json only.
const accept = "application/problem+json, application/json";
const client = createClient<paths>({
  baseUrl: base,
  headers: { Authorization: `Bearer ${env("METERLINE_TOKEN")}`, Accept: accept },
});
const admin = createClient<paths>({
  baseUrl: base,
  headers: { Authorization: `Bearer ${env("METERLINE_ADMIN_TOKEN")}`, Accept: accept },
});
const limited = createClient<paths>({
  baseUrl: base,
  headers: { Authorization: `Bearer ${env("METERLINE_LIMITED_TOKEN")}`, Accept: accept },
});
const limitedDirectory = env("METERLINE_LIMITED_DIRECTORY");
// Documents of this run carry their own docType, so the listing counts only them even on a store with others.
const run = crypto.randomUUID().slice(0, 8);
const docType = `scenario-${run}`;

function documentInput(title: string): DocumentInput {
  return {
    title,
    docType,
    jurisdiction: "eu",
    status: "published",
    summary: "Rules for goods brought into or taken out of the customs territory.",
    tags: ["Customs", "eu", "customs"],
    effectiveDate: "2026-05-01",
    body: "Article 1. This regulation lays down the customs code.",
  };
}

/** The query of a nextLink, after checking that it is absolute, at our origin, and names `path`. */
function nextQuery(nextLink: string, path: string): string {
  const url = new URL(nextLink); // throws on a relative link
  check(url.origin === new URL(base).origin, `nextLink ${nextLink} is not at ${base}`);
  check(url.pathname === path, `nextLink ${nextLink} does not name ${path}`);
  return url.search.replace(/^\?/, "");
}

async function create(): Promise<DocumentView[]> {
  const input = documentInput("Union Customs Code");
  const { data, error, response } = await client.POST("/api/v1/documents", { body: input });
  expectStatus(response, 201, "(a) POST /api/v1/documents", error);
  check(data !== undefined, "(a) 201 without a body");
  check(data.title === input.title && data.docType === docType, `(a) created ${JSON.stringify(data)}`);
  check(data.status === "published" && data.effectiveDate === "2026-05-01", `(a) created ${JSON.stringify(data)}`);
  check(JSON.stringify(data.tags) === JSON.stringify(["customs", "eu"]), `(a) tags ${JSON.stringify(data.tags)}`);
  check(response.headers.get("etag") === data.etag, `(a) ETag ${response.headers.get("etag")} vs etag ${data.etag}`);
  const location = response.headers.get("location");
  check(location !== null && location.endsWith(`/api/v1/documents/${data.id}`), `(a) Location ${location}`);
  console.log(`(a) created ${data.id}`);
  return [data];
}

async function listAcrossPages(created: DocumentView[]): Promise<void> {
  for (let i = 1; i < 5; i++) {
    const { data, error, response } = await client.POST("/api/v1/documents", { body: documentInput(`Page test ${i}`) });
    expectStatus(response, 201, `(b) POST /api/v1/documents #${i}`, error);
    created.push(data!);
  }
  const seen: string[] = [];
  let pages = 0;
  let page = await client.GET("/api/v1/documents", { params: { query: { docType, maxpagesize: 2 } } });
  for (;;) {
    expectStatus(page.response, 200, `(b) GET /api/v1/documents page ${pages + 1}`, page.error);
    const list = page.data!;
    pages += 1;
    check(list.value.length <= 2, `(b) page ${pages} has ${list.value.length} items with maxpagesize=2`);
    seen.push(...list.value.map((d) => d.id));
    if (!list.nextLink) break;
    check(pages < 10, "(b) more than 10 pages for 5 documents");
    const query = nextQuery(list.nextLink, "/api/v1/documents");
    // The typed operation, with the nextLink's query string verbatim.
    page = await client.GET("/api/v1/documents", { querySerializer: () => query });
  }
  const expected = created.map((d) => d.id).sort();
  check(
    JSON.stringify([...seen].sort()) === JSON.stringify(expected),
    `(b) listed ${JSON.stringify(seen)}, created ${JSON.stringify(expected)}`,
  );
  check(pages === 3, `(b) 5 documents in ${pages} pages of at most 2`);
  console.log(`(b) listed ${seen.length} documents over ${pages} pages via nextLink`);
}

async function conditionalUpdate(id: string): Promise<void> {
  const got = await client.GET("/api/v1/documents/{id}", { params: { path: { id } } });
  expectStatus(got.response, 200, "(c) GET /api/v1/documents/{id}", got.error);
  const etag = got.response.headers.get("etag");
  check(etag !== null && etag === got.data!.etag, `(c) ETag ${etag} vs etag ${got.data!.etag}`);
  const input = { ...documentInput("Union Customs Code (recast)"), status: "archived" as const };
  const put = await client.PUT("/api/v1/documents/{id}", {
    params: { path: { id }, header: { "If-Match": etag } },
    body: input,
  });
  expectStatus(put.response, 200, "(c) PUT with the current ETag", put.error);
  check(put.data!.title === input.title && put.data!.status === "archived", `(c) replaced ${JSON.stringify(put.data)}`);
  const fresh = put.response.headers.get("etag");
  check(fresh !== null && fresh !== etag, `(c) the ETag did not change: ${fresh}`);
  const stale = await client.PUT("/api/v1/documents/{id}", {
    params: { path: { id }, header: { "If-Match": etag } },
    body: documentInput("Lost update"),
  });
  expectStatus(stale.response, 412, "(c) PUT with the stale ETag", stale.error);
  const problem = asProblem(stale.error, stale.response, "(c) 412");
  check(problem.code === "PreconditionFailed", `(c) 412 code ${problem.code}`);
  console.log(`(c) If-Match ${etag} replaced it (now ${fresh}); the stale ETag got 412 ${problem.code}`);
}

async function idempotentReplay(): Promise<void> {
  const key = crypto.randomUUID();
  const send = () =>
    client.POST("/api/v1/documents", {
      params: { header: { "Idempotency-Key": key } },
      body: documentInput("Created once"),
    });
  const first = await send();
  expectStatus(first.response, 201, "(d) first POST with Idempotency-Key", first.error);
  check(first.response.headers.get("idempotency-replayed") === null, "(d) the first call says it was replayed");
  const second = await send();
  expectStatus(second.response, 201, "(d) second POST with the same Idempotency-Key", second.error);
  check(second.data!.id === first.data!.id, `(d) replay made ${second.data!.id}, first was ${first.data!.id}`);
  check(second.response.headers.get("idempotency-replayed") === "true", "(d) the replay has no Idempotency-Replayed: true");
  const listed = await client.GET("/api/v1/documents", { params: { query: { docType, q: "Created once" } } });
  expectStatus(listed.response, 200, "(d) GET /api/v1/documents", listed.error);
  const copies = listed.data!.value.filter((d) => d.title === "Created once").length;
  check(copies === 1, `(d) ${copies} documents after a replayed create`);
  console.log(`(d) Idempotency-Key ${key} replayed ${first.data!.id}`);
}

async function validationError(): Promise<void> {
  // What a careless (untyped) caller sends: docType a number and no title. The cast is the point.
  const invalid = { docType: 42 } as unknown as DocumentInput;
  const { data, error, response } = await client.POST("/api/v1/documents", { body: invalid });
  expectStatus(response, 422, "(e) POST an invalid document", data ?? error);
  const problem = asProblem(error, response, "(e) 422");
  const pointers = (problem.errors ?? []).map((e) => e.pointer);
  check(pointers.includes("/title"), `(e) errors[].pointer ${JSON.stringify(pointers)} lacks /title`);
  check(pointers.includes("/docType"), `(e) errors[].pointer ${JSON.stringify(pointers)} lacks /docType`);
  console.log(`(e) 422 ${problem.code} with pointers ${pointers.join(", ")}`);
}

async function rateLimited(): Promise<void> {
  const plan = `scenario-${run}`;
  const created = await admin.POST("/api/v1/plans", {
    body: {
      code: plan,
      name: "Scenario (tiny rate limit)",
      requestsPerMinute: 60,
      burst: 1,
      monthlyQuotaUnits: 1000000,
      overagePolicy: "allow",
      currency: "EUR",
      basePriceMicros: 0,
      overageUnitPriceMicros: 0,
    },
  });
  expectStatus(created.response, 201, "(f) POST /api/v1/plans", created.error);
  let tenant: components["schemas"]["TenantView"] | undefined;
  let page = await admin.GET("/api/v1/tenants", { params: { query: { maxpagesize: 50 } } });
  for (;;) {
    expectStatus(page.response, 200, "(f) GET /api/v1/tenants", page.error);
    tenant = page.data!.value.find((t) => t.entraTenantId === limitedDirectory);
    if (tenant || !page.data!.nextLink) break;
    const query = nextQuery(page.data!.nextLink, "/api/v1/tenants");
    page = await admin.GET("/api/v1/tenants", { querySerializer: () => query });
  }
  check(tenant !== undefined, `(f) no tenant for directory ${limitedDirectory}`);
  const current = await admin.GET("/api/v1/tenants/{id}", { params: { path: { id: tenant.id } } });
  expectStatus(current.response, 200, "(f) GET /api/v1/tenants/{id}", current.error);
  const etag = current.response.headers.get("etag");
  check(etag !== null, "(f) GET /api/v1/tenants/{id} has no ETag");
  const moved = await admin.PATCH("/api/v1/tenants/{id}", {
    params: { path: { id: tenant.id }, header: { "If-Match": etag } },
    headers: { "Content-Type": "application/merge-patch+json" },
    body: { plan },
  });
  expectStatus(moved.response, 200, "(f) PATCH /api/v1/tenants/{id}", moved.error);
  check(moved.data!.plan === plan, `(f) the tenant is on ${moved.data!.plan}, not ${plan}`);

  // A burst of 1 at one request a second: a few calls in a row must meet the limiter (leases may let one or two
  // more through first).
  let refused: { problem: Problem; retryAfter: number } | undefined;
  let calls = 0;
  while (!refused && calls < 50) {
    calls += 1;
    const me = await limited.GET("/api/v1/me");
    if (me.response.status === 200) continue;
    expectStatus(me.response, 429, `(f) GET /api/v1/me call ${calls}`, me.error);
    const problem = asProblem(me.error, me.response, "(f) 429");
    const header = me.response.headers.get("retry-after");
    check(header !== null && /^[0-9]+$/.test(header), `(f) Retry-After ${header}`);
    refused = { problem, retryAfter: Number(header) };
  }
  check(refused !== undefined, `(f) ${calls} calls in a row on a plan of 60 a minute, burst 1, and no 429`);
  const { problem, retryAfter } = refused;
  check(problem.code === "RateLimited", `(f) 429 code ${problem.code}`);
  check(retryAfter >= 1 && retryAfter <= 60, `(f) Retry-After ${retryAfter} on a plan of 60 a minute`);
  await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
  const retried = await limited.GET("/api/v1/me");
  expectStatus(retried.response, 200, `(f) GET /api/v1/me after waiting Retry-After ${retryAfter} s`, retried.error);
  check(retried.data!.tenant?.plan === plan, `(f) /me says plan ${retried.data!.tenant?.plan}`);
  console.log(`(f) 429 ${problem.code} after ${calls} calls; waited Retry-After ${retryAfter} s and the retry succeeded`);
}

async function main(): Promise<void> {
  const created = await create();
  await listAcrossPages(created);
  await conditionalUpdate(created[0]!.id);
  await idempotentReplay();
  await validationError();
  await rateLimited();
  console.log("scenario passed");
}

main().catch((error: unknown) => {
  console.error(`scenario failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
