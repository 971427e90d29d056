"""`bentoml containerize` for real: `scripts/container.sh` starts a Docker engine when none
answers, builds the local base image when it is missing and containerizes a Bento of the
session's models; the image then runs with `docker run --network host` against the session's
Redis on 127.0.0.1.

What the image must be: small (SIZE_BUDGET_BYTES), a non-root user, no torch and no training
code, a HEALTHCHECK on /readyz that turns healthy, the service answering /recommend, /events and
/metrics, and SIGTERM (`docker stop`) draining a request in flight. Marked `container`: CI runs
it; `-m "not container"` skips it on a machine without root or Docker. The test removes its
containers and its image and stops a dockerd it started; the base image and BuildKit's cache
stay in dockerd's store, so a rerun on the same machine builds in seconds.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools.local_redis import LocalRedis, free_port
from devtools.processes import KEEP_ALIVE_S, REPO_ROOT
from serving.schemas import RecommendResponse
from tests.support.bento_build import build_bento, build_context, clean_env
from tests.support.fixtures_models import TrainedModels
from tests.support.http import (
    RELAXED_LATENCY,
    idle_connection_still_answers,
    metric_delta,
    metric_samples,
    wait_for,
)

SCRIPT = REPO_ROOT / "scripts" / "container.sh"
# Debian's docker client (BuildKit built in) before any other on PATH, as the script does.
DOCKER_PATH = f"/usr/sbin:/usr/bin:/sbin:/bin:{os.environ.get('PATH', '')}"
ENGINE_TIMEOUT_S = 240  # apt-get install docker.io on a fresh machine, then dockerd
BUILD_TIMEOUT_S = 900  # a fresh machine: debootstrap, the base image, the first build
READY_TIMEOUT_S = 120
HEALTHY_TIMEOUT_S = 60  # the HEALTHCHECK probes every 5 s
DOCKER_TIMEOUT_S = 60
SIZE_BUDGET_BYTES = 1_200_000_000  # 1.2 GB, as `docker images` counts
STOP_GRACE_S = 30  # docker stop's wait before SIGKILL
HOLD_S = 2.0  # how long the slow client keeps its request in flight after SIGTERM

pytestmark = [pytest.mark.container, pytest.mark.slow,
              pytest.mark.timeout(ENGINE_TIMEOUT_S + BUILD_TIMEOUT_S + 300)]


@dataclass(frozen=True)
class BuiltImage:
    name: str  # recommender:<bento version>
    size_bytes: int
    build_s: float  # container.sh build: engine, base image and containerize
    champion: dict[str, str]  # model kind -> BentoML tag the image serves


@dataclass(frozen=True)
class RunningContainer:
    name: str
    port: int
    ready_s: float  # docker run to /readyz answering 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _docker(*args: str, check: bool = True, timeout_s: float = DOCKER_TIMEOUT_S) -> str:
    done = subprocess.run(["docker", *args], env={**os.environ, "PATH": DOCKER_PATH},
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0 or not check, (f"docker {' '.join(args)} failed "
                                               f"({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.strip()


def _engine_answers() -> bool:
    try:
        subprocess.run(["docker", "info"], env={**os.environ, "PATH": DOCKER_PATH},
                       capture_output=True, timeout=DOCKER_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _container_sh(*args: str, env: dict[str, str], log: Path, timeout_s: float) -> None:
    with log.open("w") as out:
        done = subprocess.run(["bash", str(SCRIPT), *args], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    assert done.returncode == 0, f"container.sh {' '.join(args)} failed ({log}):\n{tail}"


def _logs(name: str, tail: str = "all") -> str:
    """The container's stdout and stderr, interleaved."""
    done = subprocess.run(["docker", "logs", "--tail", tail, name], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=DOCKER_TIMEOUT_S,
                          env={**os.environ, "PATH": DOCKER_PATH}, check=False)
    return done.stdout


def _inspect(name: str, template: str) -> Any:
    return json.loads(_docker("inspect", "--format", f"{{{{json {template}}}}}", name))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The script's environment, with an engine answering; a dockerd it started is stopped."""
    state = tmp_path_factory.mktemp("container-state")
    env = {**clean_env(), "RECSYS_CONTAINER_STATE": str(state)}
    started_here = not _engine_answers()
    _container_sh("engine", env=env, log=state / "engine.log", timeout_s=ENGINE_TIMEOUT_S)
    yield env
    if started_here:
        _container_sh("stop", env=env, log=state / "stop.log", timeout_s=STOP_GRACE_S + 30)


@pytest.fixture(scope="module")
def image(trained_models: TrainedModels, engine: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    root = tmp_path_factory.mktemp("container-bento")
    home = {"BENTOML_HOME": str(trained_models.bentoml_home)}
    tag = build_bento(build_context(trained_models, root), clean_env(**home))
    started = time.perf_counter()
    _container_sh("build", tag, env={**engine, **home}, log=root / "build.log",
                  timeout_s=BUILD_TIMEOUT_S)
    build_s = time.perf_counter() - started
    size = int(_docker("image", "inspect", "--format", "{{.Size}}", tag))
    champion = json.loads(trained_models.models_file.read_text())["champion"]
    yield BuiltImage(tag, size, build_s, champion)
    _docker("image", "rm", "--force", tag, check=False)


@contextmanager
def _running(image: BuiltImage, redis_url: str) -> Iterator[RunningContainer]:
    """`docker run` on the host network, serving on 127.0.0.1 and a free port; removed after."""
    name, port = f"recsys-test-{uuid.uuid4().hex[:8]}", free_port()
    settings = {"BENTOML_HOST": "127.0.0.1", "BENTOML_PORT": str(port),
                "RECSYS_REDIS_URL": redis_url, **RELAXED_LATENCY}
    env_args = [arg for key, value in settings.items() for arg in ("--env", f"{key}={value}")]
    started = time.perf_counter()
    _docker("run", "--detach", "--name", name, "--network", "host", *env_args, image.name)
    try:
        ready_s = _wait_ready(name, f"http://127.0.0.1:{port}", started)
        yield RunningContainer(name, port, ready_s)
    finally:
        _docker("rm", "--force", name, check=False)


def _wait_ready(name: str, url: str, started: float) -> float:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            assert _inspect(name, ".State.Running"), _logs(name, "60")
            time.sleep(0.25)
    raise AssertionError(f"{name} not ready after {READY_TIMEOUT_S} s:\n"
                         f"{_logs(name, '60')}")


def _empty_redis(redis_server: LocalRedis) -> str:
    redis_server.start()  # a module before may have stopped it
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="module")
def container(image: BuiltImage, redis_server: LocalRedis) -> Iterator[RunningContainer]:
    with _running(image, _empty_redis(redis_server)) as running:
        yield running


@pytest.fixture(scope="module")
def http(container: RunningContainer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=container.url, timeout=10.0) as client:
        yield client


def _recommend(http: httpx.Client, user_id: str, k: int = 10) -> dict[str, Any]:
    response = http.post("/recommend", json={"user_id": user_id, "k": k})
    assert response.status_code == 200, response.text
    return RecommendResponse.model_validate(response.json()).model_dump()


# ---- the image ----------------------------------------------------------------------------

def test_the_image_is_within_its_size_budget(image: BuiltImage, container: RunningContainer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():  # the figures the README quotes
        print(f"\n{image.name}: {image.size_bytes / 1e9:.2f} GB ({image.size_bytes} bytes), "
              f"container.sh build {image.build_s:.0f} s, docker run to /readyz "
              f"{container.ready_s:.1f} s")
    assert image.size_bytes <= SIZE_BUDGET_BYTES


def test_the_service_runs_as_a_non_root_user(image: BuiltImage,
                                             container: RunningContainer) -> None:
    assert _inspect(image.name, ".Config.User") == "bentoml"
    uid = _docker("exec", container.name, "id", "-u")
    assert uid.isdigit() and int(uid) != 0
    assert _docker("exec", container.name, "stat", "-c", "%u", "/proc/1") == uid  # bentoml serve


def test_the_image_has_no_torch_and_no_training_code(container: RunningContainer) -> None:
    """Asked where the service's own code is imported from (the Bento's src/), with a control:
    the runtime package is found there."""
    found = _docker("exec", "--workdir", "/home/bentoml/bento/src", container.name, "python", "-c",
                    "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not "
                    "None for m in ('recsys', 'serving', 'torch', 'mlflow', 'training')}))")
    assert json.loads(found) == {"recsys": True, "serving": True, "torch": False,
                                 "mlflow": False, "training": False}
    src = _docker("exec", container.name, "ls", "/home/bentoml/bento/src").split()
    assert "training" not in src and "devtools" not in src and "service.py" in src


def test_the_health_check_probes_readyz_and_turns_healthy(image: BuiltImage,
                                                          container: RunningContainer) -> None:
    check = _inspect(image.name, ".Config.Healthcheck")
    assert check["Test"][0] == "CMD-SHELL" and "/readyz" in check["Test"][1]

    wait_for(lambda: _inspect(container.name, ".State.Health.Status") == "healthy",
             HEALTHY_TIMEOUT_S, f"{container.name} healthy")


def test_idle_keep_alive_connections_outlive_a_load_balancers(image: BuiltImage,
                                                            container: RunningContainer) -> None:
    """The image's CMD gives `bentoml serve` the keep-alive timeout the main command uses,
    longer than a load balancer's idle timeout (uvicorn's default, 5 s, is not)."""
    assert _inspect(image.name, ".Config.Cmd") == ["--timeout-keep-alive", str(KEEP_ALIVE_S)]
    assert idle_connection_still_answers("127.0.0.1", container.port)


# ---- the service in it --------------------------------------------------------------------

def test_recommend_answers_from_the_packaged_models(http: httpx.Client,
                                                    image: BuiltImage) -> None:
    body = _recommend(http, f"container-{uuid.uuid4().hex[:8]}", k=7)
    shown = {k: body[k] for k in ("model_versions", "ranker", "cache", "degraded", "latency_ms")}
    print(f"\nthe container's /recommend: {shown}, first items "
          f"{[(i['item_id'], round(i['score'], 4)) for i in body['items'][:3]]}")

    assert len(body["items"]) == 7 and [i["rank"] for i in body["items"]] == list(range(1, 8))
    assert len({item["item_id"] for item in body["items"]}) == 7
    assert body["model_versions"] == image.champion
    assert body["degraded"] is False and body["degraded_reasons"] == []
    assert body["cache"] == "miss"


def test_an_event_reaches_redis_and_invalidates_the_cached_answer(
        http: httpx.Client, redis_server: LocalRedis) -> None:
    user = f"container-{uuid.uuid4().hex[:8]}"
    first = _recommend(http, user)
    assert _recommend(http, user)["cache"] == "l1"
    clicked = first["items"][0]["item_id"]

    event = http.post("/events", json={"user_id": user, "item_id": clicked, "type": "click"})

    assert event.status_code == 200, event.text
    assert event.json() == {"user_id": user, "events_kept": 1, "cache_invalidated": True,
                            "duplicate": False}
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        histories = [client.lrange(key, 0, -1) for key in client.scan_iter(f"*{user}*")
                     if client.type(key) == "list"]
    assert [h for h in histories if any(clicked in entry for entry in h)], histories
    after = _recommend(http, user)
    assert after["cache"] == "miss" and clicked not in {i["item_id"] for i in after["items"]}


def test_metrics_count_the_requests_answered(http: httpx.Client) -> None:
    before = http.get("/metrics").text
    for n in range(3):
        _recommend(http, f"container-metrics-{n}-{uuid.uuid4().hex[:6]}")
    after = http.get("/metrics")

    assert after.status_code == 200
    delta = metric_delta(before, after.text)
    answered = {k: v for k, v in delta.items() if k.startswith("bentoml_service_request_total{")
                and 'endpoint="/recommend"' in k}
    assert list(answered.values()) == [3] and 'http_response_code="200"' in next(iter(answered))
    assert delta['recsys_cache_lookups_total{kind="results",level="miss"}'] == 3  # new users
    errors = {k: v for k, v in metric_samples(after.text, "bentoml_service_request_total{").items()
              if 'http_response_code="5' in k and v > 0}
    assert not errors


# ---- shutdown -----------------------------------------------------------------------------

def test_sigterm_drains_the_request_in_flight(image: BuiltImage,
                                              redis_server: LocalRedis) -> None:
    """A slow client has sent half its request when `docker stop` sends SIGTERM; it sends the
    rest HOLD_S later and still gets its answer, and only then does the container exit (0, not
    killed at STOP_GRACE_S)."""
    body = json.dumps({"user_id": f"drain-{uuid.uuid4().hex[:8]}", "k": 5}).encode()
    head = (f"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with _running(image, _empty_redis(redis_server)) as box, \
            socket.create_connection(("127.0.0.1", box.port), timeout=STOP_GRACE_S) as conn:
        conn.sendall(head + body[:10])
        wait_for(lambda: _in_progress(box.url) == 1, 10, "the request in flight")
        started = time.monotonic()
        stop = subprocess.Popen(["docker", "stop", "--time", str(STOP_GRACE_S), box.name],
                                env={**os.environ, "PATH": DOCKER_PATH},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(HOLD_S)
        conn.sendall(body[10:])
        response = HTTPResponse(conn)
        response.begin()
        answer = response.read()
        _, stop_errors = stop.communicate(timeout=STOP_GRACE_S + 30)
        stopped_s = time.monotonic() - started
        state = _inspect(box.name, ".State")
        logs = _logs(box.name)

    assert response.status == 200, answer
    assert len(RecommendResponse.model_validate_json(answer).items) == 5
    assert stop.returncode == 0, stop_errors
    assert HOLD_S <= stopped_s < STOP_GRACE_S, stopped_s  # waited for it; not SIGKILLed
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert "Completed async cleanup hook: close" in logs  # on_shutdown ran after the drain


def _in_progress(url: str) -> float:
    """/recommend requests the service has begun and not yet answered."""
    samples = metric_samples(httpx.get(f"{url}/metrics", timeout=5.0).text,
                             "bentoml_service_request_in_progress{")
    return sum(value for key, value in samples.items() if 'endpoint="/recommend"' in key)
