"""What an operator installs beside the manifests (deploy/monitoring/): the Prometheus rules pass
`promtool check rules` and their unit tests (`promtool test rules`, each alert seen firing and
not firing), and every metric the rules and the Grafana dashboard's panels name is a series the
service exports, matched on labels it carries.

The exported series come from the metric objects of recsys/ and serving/ and from BentoML's own
declarations of its request metrics, so that metrics a running service shows only once used (the
canary's, a breaker's) count too; a slow test holds that catalogue to a real `bentoml serve`'s
/metrics. promtool comes from Debian's prometheus package (scripts/bootstrap.sh).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.processes import ServerProcess
from recsys.settings import ServingSettings
from tests.support.exported_metrics import Catalogue, bentoml_series, runtime_series
from tests.support.fixtures_models import TrainedModels
from tests.support.served import served_with_redis

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yaml"
RULE_TESTS = MONITORING / "alerts_test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Labels Prometheus adds to every series it scrapes (pod discovery adds namespace and pod).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
SYNTHETIC = {"up": frozenset()}  # series Prometheus makes itself, not the service
SEVERITIES = {"critical", "warning", "info"}
LATENCY_ALERT = "RecsysRecommendLatencyOverBudget"



# ---- promtool ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool() -> Path:
    beside_python = Path(sys.executable).parent / "promtool"
    found = beside_python if beside_python.is_file() else shutil.which("promtool")
    if found is None:
        message = ("no promtool: scripts/bootstrap.sh unpacks it from Debian's prometheus "
                   "package into .venv/bin (or `apt-get install prometheus`)")
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a skip there would hide the rules' checks
        pytest.skip(message)
    return Path(found)


def run_promtool(promtool: Path, *args: str) -> str:
    done = subprocess.run([str(promtool), *args], cwd=MONITORING, capture_output=True,
                          text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


def test_promtool_checks_the_rules(promtool: Path) -> None:
    output = run_promtool(promtool, "check", "rules", RULES.name)

    print(f"\n$ promtool check rules {RULES.name}\n{output}")
    assert "SUCCESS" in output


def test_promtool_unit_tests_of_the_rules_pass(promtool: Path) -> None:
    output = run_promtool(promtool, "test", "rules", RULE_TESTS.name)

    print(f"\n$ promtool test rules {RULE_TESTS.name}\n{output}")
    assert "SUCCESS" in output


# ---- the rules' shape ----------------------------------------------------------------------

def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules(kind: str) -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if kind in rule]


def test_every_alert_has_a_duration_a_severity_and_a_runbook() -> None:
    for rule in rules("alert"):
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))

    for name in {rule["alert"] for rule in rules("alert")}:
        assert True in cases.get(name, []), f"{name}: no test where it fires"
        assert False in cases.get(name, []), f"{name}: no test where it stays silent"


def test_the_latency_alert_uses_the_service_budget() -> None:
    budget_s = ServingSettings.model_fields["budget_ms"].default / 1000
    [rule] = [r for r in rules("alert") if r["alert"] == LATENCY_ALERT]
    threshold = re.search(r">\s*([0-9.]+)\s*$", rule["expr"].strip())

    assert threshold is not None and float(threshold.group(1)) == budget_s, rule["expr"]


def test_the_readme_lists_every_alert() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Monitoring\n", 1)[-1].split("\n## ", 1)[0]

    assert "\n## Monitoring\n" in readme
    for name in {rule["alert"] for rule in rules("alert")}:
        assert f"`{name}`" in section, name


# ---- PromQL: the series an expression reads ------------------------------------------------

TOKEN = re.compile(r"""\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<punct>=~|!~|!=|==|>=|<=|[{}(),=<>+\-*/^%@])
)""", re.VERBOSE)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk",
                "bottomk", "quantile", "count_values", "limitk", "limit_ratio"}


@dataclass
class Reads:
    """What one expression reads: its selectors (name -> label names matched) and the labels
    it groups or matches by."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(expr.rstrip()):
        match = TOKEN.match(expr, position)
        if match is None or match.lastgroup is None:
            raise ValueError(f"cannot read {expr[position:position + 30]!r} in {expr!r}")
        found.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return found


def reads(expr: str) -> Reads:
    """Parse enough PromQL to name the series: an identifier that is not a function,
    aggregation or keyword is a metric, and the `{...}` after it holds its matchers."""
    result, items, i = Reads(), tokens(expr), 0
    while i < len(items):
        kind, text = items[i]
        following = items[i + 1][1] if i + 1 < len(items) else ""
        if kind != "ident":
            i += 1
        elif text in GROUPING:
            i += 1
            if following == "(":
                i, labels = label_list(items, i + 1)
                result.grouping |= labels
        elif text in KEYWORDS or text in AGGREGATIONS or following == "(":
            i += 1
        else:
            i, matched = matchers(items, i + 1)
            result.selectors.append((text, matched))
    return result


def label_list(items: list[tuple[str, str]], i: int) -> tuple[int, set[str]]:
    labels = set()
    while items[i][1] != ")":
        if items[i][0] == "ident":
            labels.add(items[i][1])
        i += 1
    return i + 1, labels


def matchers(items: list[tuple[str, str]], i: int) -> tuple[int, frozenset[str]]:
    if i >= len(items) or items[i][1] != "{":
        return i, frozenset()
    labels = set()
    i += 1
    while items[i][1] != "}":
        if items[i][0] == "ident" and items[i + 1][1] in ("=", "!=", "=~", "!~"):
            labels.add(items[i][1])
        i += 1
    return i + 1, frozenset(labels)


def test_the_parser_finds_metrics_labels_and_grouping() -> None:
    found = reads('sum by (namespace, le) (rate(a_bucket{x="1",y=~"$v|}"}[$__rate_interval])) '
                  '/ ignoring (reason) group_left max(b offset 1h) > 0.5 and on (ns) up == 1')

    assert found.selectors == [("a_bucket", frozenset({"x", "y"})), ("b", frozenset()),
                               ("up", frozenset())]
    assert found.grouping == {"namespace", "le", "reason", "ns"}


# ---- the catalogue of exported series ------------------------------------------------------

@pytest.fixture(scope="module")
def exported() -> Catalogue:
    return runtime_series() | bentoml_series()


def test_the_catalogue_holds_the_metrics_the_rules_rely_on(exported: Catalogue) -> None:
    assert exported["bentoml_service_request_duration_seconds_bucket"] >= {
        "endpoint", "http_response_code", "runner_name", "le"}
    assert exported["recsys_fallbacks_total"] == {"reason"}
    assert exported["recsys_circuit_breaker_open"] == {"breaker", "pid"}
    assert exported["recsys_canary_share"] == frozenset()  # one value per pod ("mostrecent")


# ---- every name the rules and the dashboard use is exported --------------------------------

def unexported(expressions: dict[str, str], known: Catalogue) -> list[str]:
    """What the expressions (where -> PromQL) read that no known series has: a metric, a label
    matched on it, or a label grouped by."""
    problems = []
    for where, expr in expressions.items():
        found = reads(expr)
        if not found.selectors:
            problems.append(f"{where}: reads no metric: {expr}")
        seen: set[str] = set(TARGET_LABELS)
        for name, labels in found.selectors:
            if name not in known:
                problems.append(f"{where}: {name} is not exported")
                continue
            seen |= known[name]
            if labels - known[name] - TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {sorted(labels - known[name])}")
        if found.grouping - seen:
            problems.append(f"{where}: groups by {sorted(found.grouping - seen)}, which no "
                            f"series it reads carries")
    return problems


def recorded_series() -> Catalogue:
    """The recording rules' series, each with the labels its expression keeps."""
    recorded: Catalogue = {}
    for rule in rules("record"):
        found = reads(rule["expr"])
        recorded[rule["record"]] = frozenset(found.grouping - {"le"})
    return recorded


def rule_expressions() -> dict[str, str]:
    return {rule.get("alert", rule.get("record")) + f" #{n}": rule["expr"]
            for n, rule in enumerate(rules("expr"))}


def dashboard_expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every panel query (rows' nested panels included), annotation query and variable query.
    `label_values(selector, label)` reads the selector and matches the label on it."""
    found = {}
    panels = [*dashboard["panels"]]
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found[f"annotation {annotation['name']!r}"] = annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            values = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert values, f"variable {variable['name']}: {query}"
            selector, label = values.groups()
            found[f"variable {variable['name']!r}"] = f"sum by ({label}) ({selector})"
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_metric_in_the_rules_is_exported(exported: Catalogue) -> None:
    problems = unexported(rule_expressions(), exported | recorded_series() | SYNTHETIC)

    assert not problems, "\n".join(problems)


def test_every_metric_in_the_dashboard_is_exported(exported: Catalogue,
                                                   dashboard: dict[str, Any]) -> None:
    expressions = dashboard_expressions(dashboard)

    assert len(expressions) >= 30
    problems = unexported(expressions, exported)  # the raw series: no recording rule needed
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("expr, problem", [
    ("rate(recsys_no_such_metric_total[$__rate_interval])",
     "recsys_no_such_metric_total is not exported"),
    ('sum(rate(recsys_fallbacks_total{reasn="ranker_timeout"}[5m]))', "has no label ['reasn']"),
    ("sum by (stag) (rate(recsys_stage_seconds_count[5m]))", "groups by ['stag']"),
])
def test_the_check_fails_on_a_panel_naming_what_is_not_exported(
        exported: Catalogue, dashboard: dict[str, Any], expr: str, problem: str) -> None:
    broken = copy.deepcopy(dashboard)
    panel = copy.deepcopy(broken["panels"][1])
    panel["title"], panel["targets"] = "broken", [{"refId": "A", "expr": expr}]
    broken["panels"].append(panel)

    problems = unexported(dashboard_expressions(broken), exported)

    assert len(problems) == 1 and problem in problems[0], problems


def test_every_dashboard_query_is_valid_promql(promtool: Path, dashboard: dict[str, Any],
                                               tmp_path: Path) -> None:
    """Prometheus's own parser reads each query, given as a recording rule to `promtool check
    rules` with Grafana's variables replaced by what they expand to."""
    expanded = {"$__rate_interval": "1m", "$namespace": ".*"}
    records = []
    for n, expr in enumerate(dashboard_expressions(dashboard).values()):
        for variable, value in expanded.items():
            expr = expr.replace(variable, value)
        records.append({"record": f"dashboard:query_{n}", "expr": expr})
    (tmp_path / "dashboard_rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))

    output = run_promtool(promtool, "check", "rules", str(tmp_path / "dashboard_rules.yaml"))

    assert f"SUCCESS: {len(records)} rules found" in output, output


def test_the_dashboard_reads_one_prometheus_chosen_by_a_variable(
        dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]

    assert 36 <= dashboard["schemaVersion"] <= 41
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


# ---- the catalogue against a real service --------------------------------------------------

@pytest.fixture(scope="module")
def server(trained_models: TrainedModels, redis_server: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with served_with_redis(trained_models, redis_server,
                           tmp_path_factory.mktemp("serve-monitoring")) as process:
        yield process


def scraped_series(text: str) -> Catalogue:
    catalogue: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = re.findall(r'(\w+)="', rest.rpartition("}")[0]) if rest else []
            catalogue.setdefault(name.split(" ")[0], set()).update(labels)
    return {name: frozenset(labels) for name, labels in catalogue.items()}


@pytest.mark.slow
def test_a_running_service_exports_only_catalogued_series(server: ServerProcess,
                                                          exported: Catalogue) -> None:
    with server.client() as client:
        for n in range(3):
            user = f"monitoring-{n}"
            assert client.post("/recommend", json={"user_id": user, "k": 5}).status_code == 200
            assert client.post("/recommend", json={"user_id": user, "k": 5}).status_code == 200
            assert client.post("/recommend", json={"user_id": user, "k": 500}).status_code == 400
            assert client.get("/readyz").status_code == 200
        live = scraped_series(client.get("/metrics").text)

    assert {"bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket",
            "bentoml_service_request_in_progress", "recsys_stage_seconds_bucket",
            "recsys_cache_lookups_total", "recsys_variant_exposures_total"} <= set(live)
    for name, labels in live.items():
        assert name in exported, f"/metrics serves {name}, which the catalogue lacks"
        assert labels <= exported[name], (name, labels, exported[name])
