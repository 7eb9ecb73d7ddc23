"""Runs the deployment checks on the repository, and on broken copies to show each check can fail.

    target/test-venv/bin/python -m unittest discover -s tools/deploy_checks -t . -v

METERLINE_HANDLER_BIN names a built `handler` for the settings cross-check (./scripts/test passes the packaged
one); without it the check runs `cargo run -p handler -- settings`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from tools.deploy_checks import checks

ROOT = checks.ROOT


def handler_bin():
    value = os.environ.get("METERLINE_HANDLER_BIN")
    return Path(value) if value else None


class Copy:
    """A scratch copy of the parts of the repository the checks read."""

    def __enter__(self) -> Path:
        self.dir = tempfile.TemporaryDirectory()
        root = Path(self.dir.name)
        for part in ["bicep", "schemas", "functions", ".github", "docs"]:
            shutil.copytree(ROOT / part, root / part)
        shutil.copy(ROOT / "host.json", root / "host.json")
        return root

    def __exit__(self, *exc):
        self.dir.cleanup()


class BicepTests(unittest.TestCase):
    def test_every_bicep_file_parses(self):
        self.assertEqual(checks.bicep_problems(), [])
        self.assertGreaterEqual(len(list((ROOT / "bicep").rglob("*.bicep"))), 9)

    def test_a_file_with_a_syntax_error_is_reported(self):
        with Copy() as root:
            path = root / "bicep" / "modules" / "identity.bicep"
            path.write_text(path.read_text().replace("location: location\n", "location: location,,\n  tags: {\n"))
            problems = checks.bicep_problems(root)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("bicep/modules/identity.bicep: does not parse", problems[0])

    def test_parameter_files_name_only_and_all_required_parameters(self):
        self.assertEqual(checks.parameter_file_problems(), [])
        with Copy() as root:
            path = root / "bicep" / "parameters" / "prod.json"
            doc = json.loads(path.read_text())
            doc["parameters"]["sqlTargett"] = {"value": "fabric"}
            del doc["parameters"]["authAuthority"]
            path.write_text(json.dumps(doc))
            problems = checks.parameter_file_problems(root)
        self.assertEqual(
            problems,
            [
                "bicep/parameters/prod.json: `sqlTargett` is not a parameter of main.bicep",
                "bicep/parameters/prod.json: required parameter `authAuthority` is missing",
            ],
        )

    def test_role_assignments_are_scoped_to_single_resources(self):
        # Least privilege: no role assignment in any module at resource-group (or wider) scope.
        for path in sorted((ROOT / "bicep").rglob("*.bicep")):
            for name, resource in checks.parse_bicep(path).get("resources", {}).items():
                config = resource.get("config", {})
                if str(config.get("type", "")).startswith("Microsoft.Authorization/roleAssignments"):
                    self.assertIn("scope", config.get("config", config), f"{path.name}: {name} has no resource scope")


class FunctionsJsonTests(unittest.TestCase):
    def test_host_json_and_every_function_json_validate(self):
        self.assertEqual(checks.functions_json_problems(), [])

    def test_the_vendored_host_schema_alone_still_rejects_our_host_json(self):
        # When a newer snapshot accepts host.json, the overlay (schemas/overlays/) has become redundant.
        host = json.loads((ROOT / "host.json").read_text())
        bare = checks.load_schema("host.json.schema.json", overlay=False)
        self.assertNotEqual(checks.schema_errors(host, bare), [])

    def test_the_overlay_only_adds_properties(self):
        patch = json.loads((ROOT / "schemas/overlays/host.json.schema.patch.json").read_text())

        def leaves(node, path=()):
            if isinstance(node, dict) and "type" in node:
                yield path
            elif isinstance(node, dict):
                for key, value in node.items():
                    yield from leaves(value, path + (key,))

        base = checks.load_schema("host.json.schema.json", overlay=False)
        for path in leaves(patch):
            self.assertEqual(path[-2], "properties", path)
            node = base
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            self.assertIsNone(node, f"the overlay overrides an existing definition at {'/'.join(path)}")

    def test_invalid_functions_json_is_reported(self):
        with Copy() as root:
            path = root / "functions" / "UsageRollup" / "function.json"
            doc = json.loads(path.read_text())
            doc["bindings"][0]["direction"] = "sideways"
            path.write_text(json.dumps(doc))
            host = json.loads((root / "host.json").read_text())
            host["customHandler"]["enableTeleportation"] = True
            (root / "host.json").write_text(json.dumps(host))
            schema = root / "schemas" / "function.json.schema.json"
            schema.write_text(schema.read_text() + "\n")
            problems = checks.functions_json_problems(root)
        self.assertTrue(any(p.startswith("functions/UsageRollup/function.json: ") for p in problems), problems)
        self.assertTrue(any(p.startswith("host.json: ") for p in problems), problems)
        self.assertTrue(any("schemas/function.json.schema.json changed" in p for p in problems), problems)


class SettingsTests(unittest.TestCase):
    def test_every_setting_the_handler_reads_is_deployed_or_allowlisted(self):
        reads = checks.handler_settings(handler_bin())
        self.assertIn("METERLINE_STORE", reads)
        allowlist = json.loads((ROOT / "bicep/settings-allowlist.json").read_text())
        problems = checks.settings_problems(reads, checks.bicep_app_settings(), allowlist, checks.function_connections())
        self.assertEqual(problems, [])

    def test_the_connection_of_the_service_bus_trigger_is_found(self):
        self.assertEqual(checks.function_connections(), {"ServiceBusConnection": "functions/IntegrationEvents/function.json"})

    def test_each_rule_reports_its_problem(self):
        allowlist = {
            "notSetByBicep": {"METERLINE_PORT": "standalone only", "GONE": "x", "SET_ANYWAY": "y"},
            "hostSettings": {"AZURE_CLIENT_ID": "sdk", "NOT_IN_BICEP": "z"},
            "anticipated": {"KEYVAULT_URL": "soon", "EMPTY": " "},
        }
        reads = ["METERLINE_STORE", "METERLINE_PORT", "METERLINE_NEW", "SET_ANYWAY", "KEYVAULT_URL"]
        bicep = {"METERLINE_STORE", "SET_ANYWAY", "AZURE_CLIENT_ID", "KEYVAULT_URL", "STRAY", "Storage__accountName"}
        connections = {"ServiceBusConnection": "functions/X/function.json", "Storage": "functions/Y/function.json"}
        problems = checks.settings_problems(reads, bicep, allowlist, connections)
        expected = [
            "`METERLINE_NEW` is read by the handler",
            "`SET_ANYWAY` is set by Bicep but still listed under notSetByBicep",
            "notSetByBicep lists `GONE`",
            "`KEYVAULT_URL` is now in config::SETTINGS",
            "Bicep sets `STRAY`",
            "hostSettings lists `NOT_IN_BICEP`",
            "functions/X/function.json: connection `ServiceBusConnection`",
            "`EMPTY` needs a reason",
        ]
        for start in expected:
            self.assertTrue(any(start in p for p in problems), f"{start!r} not in {problems}")
        self.assertEqual(len(problems), len(expected), problems)


class GlibcCheckTests(unittest.TestCase):
    def test_the_handler_binary_is_checked_against_the_image_glibc(self):
        binary = handler_bin()
        if binary is None:
            self.skipTest("METERLINE_HANDLER_BIN is not set (./scripts/test sets it)")
        script = str(ROOT / "scripts" / "check-glibc")
        ok = subprocess.run([script, str(binary), "9.99"], capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertRegex(ok.stdout, r"needs GLIBC_2\.\d+ at most")
        too_old = subprocess.run([script, str(binary), "2.2"], capture_output=True, text=True)
        self.assertEqual(too_old.returncode, 1, too_old.stdout)
        self.assertIn("newer than the Functions image's glibc 2.2", too_old.stderr)
        not_elf = subprocess.run([script, str(ROOT / "host.json")], capture_output=True, text=True)
        self.assertEqual(not_elf.returncode, 2)


class WorkflowTests(unittest.TestCase):
    def test_both_workflows_are_valid_yaml_with_their_jobs(self):
        self.assertEqual(checks.workflow_problems(), [])

    def test_a_missing_job_or_broken_yaml_is_reported(self):
        with Copy() as root:
            ci = root / ".github/workflows/ci.yml"
            ci.write_text(ci.read_text().replace("\n  bicep:\n", "\n  bicep_renamed:\n"))
            deploy = root / ".github/workflows/deploy.yml"
            deploy.write_text(deploy.read_text() + "\n  broken: [unclosed\n")
            problems = checks.workflow_problems(root)
        self.assertIn(".github/workflows/ci.yml: job `bicep` is missing", problems)
        self.assertTrue(any(p.startswith(".github/workflows/deploy.yml: ") for p in problems), problems)


class ApimTests(unittest.TestCase):
    def test_the_shipped_template_leaves_no_way_around_api_management(self):
        self.assertEqual(checks.apim_bypass_problems(), [])

    def test_a_template_that_leaves_the_function_app_reachable_fails(self):
        with Copy() as root:
            main = root / "bicep/main.bicep"
            text = main.read_text()
            start = text.index("module apimLock ")
            end = text.index("\n}\n", start) + 3
            main.write_text(text[:start] + text[end:])
            problems = checks.apim_bypass_problems(root)
        self.assertEqual(
            problems,
            [
                "bicep/main.bicep: the API Management option leaves the Function App reachable directly "
                "(no module deploys modules/apim-lock.bicep)"
            ],
        )

    def test_a_lock_that_allows_by_default_or_a_listed_key_fails(self):
        with Copy() as root:
            lock = root / "bicep/modules/apim-lock.bicep"
            lock.write_text(lock.read_text().replace("ipSecurityRestrictionsDefaultAction: 'Deny'", "ipSecurityRestrictionsDefaultAction: 'Allow'"))
            main = root / "bicep/main.bicep"
            main.write_text(main.read_text().replace("module apimLock 'modules/apim-lock.bicep' = if (deployApim)", "module apimLock 'modules/apim-lock.bicep' = if (false)"))
            apim = root / "bicep/modules/apim.bicep"
            apim.write_text(apim.read_text() + "\noutput key string = listKeys('${service.id}/host/default', '2024-04-01').functionKeys.default\n")
            problems = checks.apim_bypass_problems(root)
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("must be deployed exactly when `apim` is", problems[0])
        self.assertIn("must deny by default, not 'Allow'", problems[1])
        self.assertEqual(problems[2], "bicep/modules/apim.bicep: reads a key into the template at deploy time (listKeys)")


class AlertTests(unittest.TestCase):
    def test_every_alert_rule_has_its_runbook_entry(self):
        self.assertEqual(checks.alert_runbook_problems(), [])
        rules = (ROOT / "bicep/modules/alerts.bicep").read_text().split("var rules = [", 1)[1]
        for name in ["handler-5xx-rate", "p95-latency", "breaker-open", "quota-threshold-events", "rollup-lag",
                     "quarantine-count", "outbox-backlog"]:
            self.assertIn(f"name: '{name}'", rules)

    def test_a_rule_without_an_entry_or_a_dangling_link_is_reported(self):
        with Copy() as root:
            alerts = root / "bicep/modules/alerts.bicep"
            alerts.write_text(alerts.read_text().replace("name: 'breaker-open'", "name: 'breaker-flapping'"))
            runbook = root / "docs/operations.md"
            runbook.write_text(runbook.read_text().replace("### outbox-backlog\n", "### outbox-queue\n"))
            problems = checks.alert_runbook_problems(root)
        self.assertEqual(
            problems,
            [
                "alert rule `breaker-flapping` has no runbook entry (`### breaker-flapping`) in docs/operations.md",
                "alert rule `outbox-backlog` has no runbook entry (`### outbox-backlog`) in docs/operations.md",
                "bicep/modules/alerts.bicep links docs/operations.md#outbox-backlog, which has no entry",
            ],
        )


if __name__ == "__main__":
    unittest.main()
