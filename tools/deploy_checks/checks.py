"""The deployment checks `./scripts/test` runs (through test_checks.py):

- every `.bicep` file under `bicep/` parses (pycep-parser: syntax only; CI's `az bicep build` type-checks);
- every parameter file under `bicep/parameters/` names only parameters of `main.bicep` and gives all required ones;
- `host.json` and every `functions/*/function.json` validate against the vendored Functions schemas
  (`schemas/`, plus the documented overlay for host.json);
- every setting the handler reads (`handler settings`) is set by the Function App's Bicep or allowlisted with a
  reason (`bicep/settings-allowlist.json`), every app setting Bicep sets is explained, and every function.json
  `connection` has its settings in Bicep;
- both GitHub workflows are valid YAML with the jobs the team relies on;
- with the API Management option, the Function App cannot be reached around it: `main.bicep` deploys
  `modules/apim-lock.bicep` under the same condition, fed the instance's addresses; the lock denies by default
  and allows only those addresses; and no template reads a function or host key (`listKeys`);
- every alert rule in `bicep/modules/alerts.bicep` has its runbook entry in `docs/operations.md` (a `###`
  heading with the rule's name), and every runbook link in that file points at an existing entry.

Each check returns a list of problems (empty: fine), so tests can feed it broken inputs and see it fail.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import yaml
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]

SCHEMA_SHA256 = {
    "host.json.schema.json": "92570b225cae6535871ca40b59172a58905624b0259a0244d34748c1e5b23677",
    "function.json.schema.json": "46716a18cc5c02e7c2486e06e761b8b3cd30e37d05101482cff8f42c4c9ab406",
}

WORKFLOW_JOBS = {
    "ci.yml": {"checks", "test", "package", "mssql", "bicep"},
    "deploy.yml": {"package", "deploy-dev", "deploy-test", "deploy-prod"},
    "deploy-environment.yml": {"deploy"},
}


def parse_bicep(path: Path) -> dict:
    return BicepParser().parse(file_path=path)


def bicep_problems(root: Path = ROOT) -> list[str]:
    files = sorted((root / "bicep").rglob("*.bicep"))
    if not files:
        return ["no .bicep files under bicep/"]
    problems = []
    for path in files:
        try:
            parse_bicep(path)
        except Exception as err:  # pycep raises lark errors of several types
            problems.append(f"{path.relative_to(root)}: does not parse: {str(err).splitlines()[0][:300]}")
    return problems


def parameter_file_problems(root: Path = ROOT) -> list[str]:
    main = parse_bicep(root / "bicep" / "main.bicep")
    declared = main.get("parameters", {})
    required = {name for name, p in declared.items() if p.get("default") is None}
    problems = []
    files = sorted((root / "bicep" / "parameters").glob("*.json"))
    if not files:
        problems.append("no parameter files under bicep/parameters/")
    for path in files:
        given = json.loads(path.read_text())["parameters"]
        for name in sorted(set(given) - set(declared)):
            problems.append(f"{path.relative_to(root)}: `{name}` is not a parameter of main.bicep")
        for name in sorted(required - set(given)):
            problems.append(f"{path.relative_to(root)}: required parameter `{name}` is missing")
    return problems


def merge_patch(target, patch):
    """RFC 7396 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def load_schema(name: str, root: Path = ROOT, overlay: bool = True) -> dict:
    schema = json.loads((root / "schemas" / name).read_text())
    patch = root / "schemas" / "overlays" / name.replace(".schema.json", ".schema.patch.json")
    if overlay and patch.exists():
        schema = merge_patch(schema, json.loads(patch.read_text()))
    return schema


def schema_errors(document, schema) -> list[str]:
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message[:200]}"
        for e in sorted(validator.iter_errors(document), key=str)
    ]


def functions_json_problems(root: Path = ROOT) -> list[str]:
    problems = []
    for name, digest in SCHEMA_SHA256.items():
        actual = hashlib.sha256((root / "schemas" / name).read_bytes()).hexdigest()
        if actual != digest:
            problems.append(f"schemas/{name} changed (sha256 {actual}); vendored schemas are not edited, see schemas/README.md")
    host = json.loads((root / "host.json").read_text())
    problems += [f"host.json: {e}" for e in schema_errors(host, load_schema("host.json.schema.json", root))]
    function_schema = load_schema("function.json.schema.json", root)
    function_files = sorted((root / "functions").glob("*/function.json"))
    if not function_files:
        problems.append("no functions/*/function.json")
    for path in function_files:
        document = json.loads(path.read_text())
        problems += [f"{path.relative_to(root)}: {e}" for e in schema_errors(document, function_schema)]
    return problems


def handler_settings(handler: Path | None = None, root: Path = ROOT) -> list[str]:
    """The names in config::SETTINGS, from `handler settings` (built with cargo when no binary is given)."""
    if handler is not None:
        command = [str(handler), "settings"]
    else:
        command = ["cargo", "run", "--quiet", "--locked", "-p", "handler", "--", "settings"]
    output = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout
    return [s["name"] for s in json.loads(output)]


def bicep_app_settings(root: Path = ROOT) -> set[str]:
    module = parse_bicep(root / "bicep" / "modules" / "functionapp.bicep")
    settings = module["variables"]["appSettings"]["value"]
    return set(settings)


def function_connections(root: Path = ROOT) -> dict[str, str]:
    """connection setting name -> the function.json that names it."""
    connections = {}
    for path in sorted((root / "functions").glob("*/function.json")):
        for binding in json.loads(path.read_text()).get("bindings", []):
            if binding.get("connection"):
                connections[binding["connection"]] = str(path.relative_to(root))
    return connections


def settings_problems(handler_reads: list[str], bicep_sets: set[str], allowlist: dict, connections: dict[str, str]) -> list[str]:
    not_set = allowlist.get("notSetByBicep", {})
    host = allowlist.get("hostSettings", {})
    anticipated = allowlist.get("anticipated", {})
    reads = set(handler_reads)
    problems = []
    for name in sorted(reads - bicep_sets - set(not_set)):
        problems.append(
            f"`{name}` is read by the handler but bicep/modules/functionapp.bicep does not set it "
            "(set it there, or add it to notSetByBicep in bicep/settings-allowlist.json with the reason)"
        )
    for name in sorted(set(not_set) & bicep_sets):
        problems.append(f"`{name}` is set by Bicep but still listed under notSetByBicep: remove the entry")
    for name in sorted(set(not_set) - reads):
        problems.append(f"notSetByBicep lists `{name}`, which the handler does not read: remove the entry")
    for name in sorted(set(anticipated) & reads):
        problems.append(f"`{name}` is now in config::SETTINGS: remove it from `anticipated` in bicep/settings-allowlist.json")
    # A function.json `connection` C is read by the host as the setting C or the settings C__*.
    connection_settings = {
        s for s in bicep_sets if any(s == c or s.startswith(f"{c}__") for c in connections)
    }
    for name in sorted(bicep_sets - reads - set(host) - set(anticipated) - connection_settings):
        problems.append(
            f"Bicep sets `{name}`, which neither the handler nor the host reads "
            "(remove it, or explain it under hostSettings/anticipated in bicep/settings-allowlist.json)"
        )
    for name in sorted(set(host) - bicep_sets):
        problems.append(f"hostSettings lists `{name}`, which Bicep does not set: remove the entry")
    for connection, source in sorted(connections.items()):
        if connection not in bicep_sets and not any(s.startswith(f"{connection}__") for s in bicep_sets):
            problems.append(f"{source}: connection `{connection}` has no `{connection}` or `{connection}__*` app setting in Bicep")
    for name, reason in {**not_set, **host, **anticipated}.items():
        if not str(reason).strip():
            problems.append(f"bicep/settings-allowlist.json: `{name}` needs a reason")
    return problems


def workflow_problems(root: Path = ROOT, expected: dict[str, set[str]] = WORKFLOW_JOBS) -> list[str]:
    problems = []
    for name, jobs in expected.items():
        path = root / ".github" / "workflows" / name
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            problems.append(f".github/workflows/{name}: {err}")
            continue
        if not isinstance(document, dict) or not isinstance(document.get("jobs"), dict):
            problems.append(f".github/workflows/{name}: no `jobs` mapping")
            continue
        # YAML 1.1 reads a bare `on:` key as the boolean True.
        if "on" not in document and True not in document:
            problems.append(f".github/workflows/{name}: no `on` trigger")
        for job in sorted(jobs - set(document["jobs"])):
            problems.append(f".github/workflows/{name}: job `{job}` is missing")
        for job_name, job in document["jobs"].items():
            if not isinstance(job, dict) or not ("steps" in job or "uses" in job):
                problems.append(f".github/workflows/{name}: job `{job_name}` has no steps")
            elif "uses" not in job and "runs-on" not in job:
                problems.append(f".github/workflows/{name}: job `{job_name}` has no runs-on")
    return problems


def alert_runbook_problems(root: Path = ROOT) -> list[str]:
    alerts = (root / "bicep" / "modules" / "alerts.bicep").read_text()
    runbook = (root / "docs" / "operations.md").read_text()
    headings = set(re.findall(r"^### ([a-z0-9-]+)\s*$", runbook, flags=re.MULTILINE))
    rules_block = alerts.split("var rules = [", 1)[1].split("\n]\n", 1)[0] if "var rules = [" in alerts else ""
    rules = re.findall(r"^\s+name: '([a-z0-9-]+)'\s*$", rules_block, flags=re.MULTILINE)
    problems = []
    if not rules:
        problems.append("bicep/modules/alerts.bicep: no alert rules found in `var rules`")
    for rule in rules:
        if rule not in headings:
            problems.append(f"alert rule `{rule}` has no runbook entry (`### {rule}`) in docs/operations.md")
    for anchor in sorted(set(re.findall(r"docs/operations\.md#([a-z0-9-]+)", alerts))):
        if anchor not in headings:
            problems.append(f"bicep/modules/alerts.bicep links docs/operations.md#{anchor}, which has no entry")
    return problems


def _mentions(node, text: str) -> bool:
    """Whether a pycep expression tree mentions `text` anywhere (in a string or an identifier)."""
    if isinstance(node, dict):
        return any(_mentions(v, text) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, text) for v in node)
    return text in str(node)


def apim_bypass_problems(root: Path = ROOT) -> list[str]:
    main = parse_bicep(root / "bicep" / "main.bicep")
    modules = main.get("modules", {})
    apim = [(n, m) for n, m in modules.items() if m["detail"]["path"] == "modules/apim.bicep"]
    if not apim:
        return []  # no API Management option: nothing to bypass
    problems = []
    apim_name, apim_module = apim[0]
    condition = apim_module["config"].get("condition")
    locks = [(n, m) for n, m in modules.items() if m["detail"]["path"] == "modules/apim-lock.bicep"]
    if not locks:
        problems.append(
            "bicep/main.bicep: the API Management option leaves the Function App reachable directly "
            "(no module deploys modules/apim-lock.bicep)"
        )
    for name, lock in locks:
        config = lock["config"]
        if config.get("condition") != condition:
            problems.append(
                f"bicep/main.bicep: module `{name}` (apim-lock) must be deployed exactly when `{apim_name}` is "
                f"(condition {condition!r}, not {config.get('condition')!r})"
            )
        if not _mentions(config.get("config", {}).get("params", {}).get("apimAddresses"), apim_name):
            problems.append(f"bicep/main.bicep: module `{name}` must allow the addresses `{apim_name}` outputs")
    lock_path = root / "bicep" / "modules" / "apim-lock.bicep"
    if lock_path.exists():
        resources = parse_bicep(lock_path).get("resources", {})
        configs = [
            r.get("config", {}) for r in resources.values() if str(r.get("type", "")).startswith("Microsoft.Web/sites/config")
        ]
        web = [c.get("config", c) if "condition" in c else c for c in configs]
        props = [w.get("properties", {}) for w in web if w.get("name") == "web"]
        if not props:
            problems.append("bicep/modules/apim-lock.bicep: sets no Function App access restrictions (sites/config `web`)")
        for p in props:
            if p.get("ipSecurityRestrictionsDefaultAction") != "Deny":
                problems.append(
                    "bicep/modules/apim-lock.bicep: the Function App's access restrictions must deny by default, "
                    f"not {p.get('ipSecurityRestrictionsDefaultAction')!r}"
                )
            if not _mentions(p.get("ipSecurityRestrictions"), "apimAddresses") or not _mentions(
                p.get("ipSecurityRestrictions"), "Allow"
            ):
                problems.append("bicep/modules/apim-lock.bicep: the access restrictions must allow the API Management addresses")
    for path in sorted((root / "bicep").rglob("*.bicep")):
        if "listKeys(" in path.read_text():
            problems.append(f"{path.relative_to(root)}: reads a key into the template at deploy time (listKeys)")
    return problems
