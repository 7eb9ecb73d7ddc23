// Generates a typed client from the OpenAPI document a running Meterline serves, type-checks the scenario against
// it and runs the scenario. A document change that breaks the typed client fails the type check; a server that
// answers otherwise than the document and the scenario expect fails the scenario.
//
//   METERLINE_BASE_URL=http://127.0.0.1:7071 METERLINE_TOKEN=... METERLINE_ADMIN_TOKEN=... \
//   METERLINE_LIMITED_TOKEN=... METERLINE_LIMITED_DIRECTORY=... node tests/client/run.mjs
//
// See scenario.ts for what each variable means. Exits non-zero on any failure, naming the step.
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const base = process.env.METERLINE_BASE_URL;
if (!base) {
  console.error("run.mjs: METERLINE_BASE_URL is not set (the running handler's origin, e.g. http://127.0.0.1:7071)");
  process.exit(2);
}

function step(name, args) {
  const started = Date.now();
  const result = spawnSync(process.execPath, args, { cwd: here, stdio: "inherit" });
  if (result.error) {
    console.error(`run.mjs: ${name} could not start: ${result.error.message}`);
    process.exit(1);
  }
  if (result.status !== 0) {
    console.error(`run.mjs: ${name} failed (exit ${result.status ?? result.signal})`);
    process.exit(1);
  }
  console.log(`run.mjs: ${name} passed in ${Date.now() - started} ms`);
}

const generated = join(here, "generated");
rmSync(generated, { recursive: true, force: true });
mkdirSync(generated);
// The types come from the document this server serves, not from a copy in the repository.
step("openapi-typescript", [
  join(here, "node_modules/openapi-typescript/bin/cli.js"),
  new URL("/api/openapi.json", base).href,
  "--output",
  join(generated, "api.d.ts"),
  // JSON Schema's `{"type": "object"}` without properties admits any members (the Azure envelope's innererror);
  // without this flag openapi-typescript types it Record<string, never>.
  "--empty-objects-unknown",
]);
// Type-checks the scenario against those types (strict; nothing is emitted when it does not compile).
step("tsc", [join(here, "node_modules/typescript/bin/tsc"), "--project", join(here, "tsconfig.json")]);
step("scenario", [join(generated, "out/scenario.js")]);
