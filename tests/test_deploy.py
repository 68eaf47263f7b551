"""Kubernetes deployment files (issue 15 item 4): the Dockerfile, deploy/helm/values.yaml for Dagster's Helm chart,
and the instance config they rely on.

What is validated here, and how:
* The Dockerfile is checked by a hand-written reader, not by building it: this machine has the docker client but
  no daemon (nor podman or buildah), and hadolint is not installed. The reader checks the properties the issue
  names: every base image pinned (exact version tag or digest), a non-root numeric USER in the final stage, the
  Python packages pinned (deploy/requirements.lock: every run-time dependency of pyproject.toml at a version its
  specifier allows, Dagster at exactly pyproject's version, installed with --no-deps), the command the chart
  expects (`dagster code-server start`, no ENTRYPOINT to prefix the chart's args), a HEALTHCHECK on the port the
  chart probes, and that every file it copies is in the build context .dockerignore lets through.
* The Helm values are merged over the chart's default values the way Helm merges them and validated with
  jsonschema against the chart's values.schema.json (tests/contracts/dagster-helm, see its README row).
* The run queue limits in the values equal dagster.prod.yaml's, and dagster.prod.yaml loads as a Dagster
  instance on a real PostgreSQL database created for the test and dropped after.
* The image's CMD and HEALTHCHECK run for real (e2e), outside a container, in the environment the image and the
  values give the code server.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import tomllib
import uuid
from fnmatch import fnmatch
from pathlib import Path

import jsonschema
import pytest
import sqlalchemy as sa
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from referencing import Registry
from referencing.jsonschema import DRAFT7
from ruamel.yaml import YAML

from claro_dagster.deployment import current_deployment
from tests.e2e.harness import wait_until

ROOT = Path(__file__).parents[1]
CHART = ROOT / "tests" / "contracts" / "dagster-helm"
VALUES = ROOT / "deploy" / "helm" / "values.yaml"
K8S_DEFINITIONS = "https://raw.githubusercontent.com/yannh/kubernetes-json-schema/master/v1.19.0/_definitions.json"


def load_yaml(path: Path):
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# The Dockerfile
# ---------------------------------------------------------------------------------------------------------------

def dockerfile_instructions(path: Path) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) of a Dockerfile: comments dropped, backslash continuations joined."""
    out, pending, start = [], "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append((start, keyword.upper(), args.strip()))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return out


def stages(instructions):
    """The instructions grouped per build stage (each starts with its FROM)."""
    groups: list[list] = []
    for item in instructions:
        if item[1] == "FROM":
            groups.append([])
        assert groups, f"Dockerfile line {item[0]}: {item[1]} before the first FROM"
        groups[-1].append(item)
    return groups


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), args
    return value


PINNED_IMAGE = re.compile(r"^[\w.\-/:]+?(:(?P<tag>[\w.\-]+))?(@sha256:(?P<digest>[0-9a-f]{64}))?$")


def pinned(image: str) -> bool:
    """An image reference that always means the same image: a digest, or a tag naming an exact release
    (x.y.z, optionally with a variant such as -slim-bookworm), never latest or a moving x.y tag."""
    match = PINNED_IMAGE.match(image)
    if not match:
        return False
    if match["digest"]:
        return True
    return bool(match["tag"]) and re.match(r"^\d+\.\d+\.\d+(-[a-z0-9.\-]+)?$", match["tag"]) is not None


@pytest.mark.parametrize("image, expected", [
    ("python:3.11.14-slim-bookworm", True), ("python@sha256:" + "a" * 64, True),
    ("python:3.11-slim", False), ("python:latest", False), ("python", False), ("python:slim", False),
])
def test_what_counts_as_a_pinned_base_image(image, expected):
    assert pinned(image) is expected


def test_the_dockerfile_pins_its_base_images_and_runs_as_a_non_root_user():
    groups = stages(dockerfile_instructions(ROOT / "Dockerfile"))
    for group in groups:
        line, _, args = group[0]
        image = args.split()[0]
        assert "$" not in image, f"Dockerfile line {line}: the base image must be written out, not an ARG"
        assert pinned(image), f"Dockerfile line {line}: base image {image!r} is not pinned to an exact tag or digest"
    final = groups[-1]
    users = [(line, args) for line, keyword, args in final if keyword == "USER"]
    assert users, "the final stage has no USER: the image would run as root"
    line, user = users[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, (f"Dockerfile line {line}: USER {user!r} must be a numeric non-root uid "
                                              "(Kubernetes' runAsNonRoot can only verify a number)")
    values = load_yaml(VALUES)
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["podSecurityContext"]["runAsUser"] == int(uid)
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True


def lock_pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / "deploy" / "requirements.lock").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"deploy/requirements.lock line {number}: {line!r} is not name==version"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_image_installs_exactly_the_locked_versions_and_dagster_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"deploy/requirements.lock lacks {requirement.name} (pyproject.toml): run deploy/lock.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"deploy/requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {text!r}: "
            "run deploy/lock.py")
        if name.startswith("dagster"):
            assert str(requirement.specifier) == f"=={pins[name]}"
    runs = [args for _, keyword, args in dockerfile_instructions(ROOT / "Dockerfile") if keyword == "RUN"]
    installs = [shlex.split(args) for args in runs if "pip install" in args]
    assert any("-r" in cmd and "/tmp/requirements.lock" in cmd and "--no-deps" in cmd for cmd in installs), installs
    # the project itself goes in without resolving anything else, and pip check proves the set is complete
    assert any("--no-deps" in cmd and "/src" in cmd for cmd in installs) and any("pip check" in args for args in runs)


def test_the_image_starts_the_code_server_the_chart_runs_and_checks_its_health():
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    final = stages(instructions)[-1]
    keywords = [keyword for _, keyword, _ in final]
    assert "ENTRYPOINT" not in keywords, "an ENTRYPOINT would be prefixed to the chart's container args"
    values = load_yaml(VALUES)
    deployment = values["dagster-user-deployments"]["deployments"][0]
    port = deployment["port"]
    cmd = exec_form([args for _, keyword, args in final if keyword == "CMD"][-1])
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert cmd[cmd.index("-p") + 1] == str(port) and cmd[cmd.index("-h") + 1] == "0.0.0.0"
    # the image's own command serves what the chart's args serve
    assert cmd[cmd.index("-p") + 2:] == deployment["codeServerArgs"]
    module = deployment["codeServerArgs"][deployment["codeServerArgs"].index("-m") + 1]
    workspace = load_yaml(ROOT / "workspace.yaml")
    assert module == workspace["load_from"][0]["python_module"]["module_name"]
    health = [args for _, keyword, args in final if keyword == "HEALTHCHECK"]
    assert health, "no HEALTHCHECK in the final stage"
    probe = exec_form(health[-1].split("CMD", 1)[1].strip())
    assert probe == ["dagster", "api", "grpc-health-check", "-p", str(port)]
    assert str(port) in [args for _, keyword, args in final if keyword == "EXPOSE"][-1].split()
    assert deployment["readinessProbe"]["enabled"] is True  # the chart's probe runs the same health check


def dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching pattern wins, `!` re-includes)."""
    admitted = True
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        if any(fnmatch(prefix, body) or fnmatch(prefix, body.replace("**/", "")) or body == "**"
               for prefix in prefixes):
            admitted = negate
    return admitted


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    args_defaults = dict(a.split("=", 1) for _, k, a in instructions if k == "ARG" and "=" in a)
    copied = []
    for line, keyword, args in instructions:
        if keyword != "COPY" or "--from=" in args:
            continue
        parts = [part for part in shlex.split(args) if not part.startswith("--")]
        for source in parts[:-1]:
            source = re.sub(r"\$\{(\w+)\}", lambda m: args_defaults[m[1]], source)
            assert (ROOT / source).exists(), f"Dockerfile line {line}: COPY {source} does not exist"
            assert dockerignore_admits(source, patterns), f"Dockerfile line {line}: .dockerignore keeps out {source}"
            copied.append(source)
    assert "dagster.prod.yaml" in copied and "deploy/requirements.lock" in copied
    assert not dockerignore_admits("tests/conftest.py", patterns) and not dockerignore_admits(".venv/x", patterns)


def test_the_image_puts_the_production_instance_where_the_chart_sets_dagster_home():
    final = stages(dockerfile_instructions(ROOT / "Dockerfile"))[-1]
    env = {}
    for _, keyword, args in final:
        if keyword == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    values = load_yaml(VALUES)
    assert env["DAGSTER_HOME"] == values["global"]["dagsterHome"]
    assert env["CLARO_DEPLOYMENT"] == "prod"
    copies = [shlex.split(args) for _, keyword, args in final if keyword == "COPY"]
    assert ["dagster.prod.yaml", f"{env['DAGSTER_HOME']}/dagster.yaml"] in copies


# ---------------------------------------------------------------------------------------------------------------
# The Helm values
# ---------------------------------------------------------------------------------------------------------------

def helm_merge(defaults, overrides):
    """Helm's coalescing of user values over a chart's values: maps merge key by key, anything else (lists
    included) replaces, and a null in the user values deletes the chart's key."""
    if not isinstance(defaults, dict) or not isinstance(overrides, dict):
        return copy.deepcopy(overrides)
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# The chart's schema points at Kubernetes' own definitions (yannh/kubernetes-json-schema v1.19.0) over the network.
# Offline, these stand in for them: the real shapes of the ones deploy/helm/values.yaml uses (names and types of
# the fields it sets), and "any object" for the rest.
K8S_STUBS = {
    "io.k8s.api.core.v1.EnvVar": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": {"type": "object"}},
        "additionalProperties": False},
    "io.k8s.api.core.v1.SecretEnvSource": {
        "type": "object", "properties": {"name": {"type": "string"}, "optional": {"type": "boolean"}},
        "additionalProperties": False},
    "io.k8s.api.core.v1.ConfigMapEnvSource": {
        "type": "object", "properties": {"name": {"type": "string"}, "optional": {"type": "boolean"}},
        "additionalProperties": False},
    "io.k8s.api.core.v1.LocalObjectReference": {
        "type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False},
    "io.k8s.api.core.v1.PodSecurityContext": {
        "type": "object", "additionalProperties": False,
        "properties": {"runAsNonRoot": {"type": "boolean"}, "runAsUser": {"type": "integer"},
                       "runAsGroup": {"type": "integer"}, "fsGroup": {"type": "integer"},
                       "seccompProfile": {"type": "object", "required": ["type"]},
                       "supplementalGroups": {"type": "array"}, "fsGroupChangePolicy": {"type": "string"},
                       "sysctls": {"type": "array"}, "seLinuxOptions": {"type": "object"},
                       "windowsOptions": {"type": "object"}}},
    "io.k8s.api.core.v1.SecurityContext": {
        "type": "object", "additionalProperties": False,
        "properties": {"allowPrivilegeEscalation": {"type": "boolean"}, "runAsNonRoot": {"type": "boolean"},
                       "runAsUser": {"type": "integer"}, "runAsGroup": {"type": "integer"},
                       "readOnlyRootFilesystem": {"type": "boolean"}, "privileged": {"type": "boolean"},
                       "capabilities": {"type": "object", "additionalProperties": False,
                                        "properties": {"add": {"type": "array", "items": {"type": "string"}},
                                                       "drop": {"type": "array", "items": {"type": "string"}}}},
                       "seccompProfile": {"type": "object", "required": ["type"]}, "procMount": {"type": "string"},
                       "seLinuxOptions": {"type": "object"}, "windowsOptions": {"type": "object"}}},
    "io.k8s.api.core.v1.ResourceRequirements": {
        "type": "object", "additionalProperties": False,
        "properties": {"limits": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
                       "requests": {"type": "object", "additionalProperties": {"type": ["string", "number"]}}}},
}


def k8s_definitions_document() -> dict:
    text = (CHART / "values.schema.json").read_text()
    names = set(re.findall(re.escape(K8S_DEFINITIONS) + r"#/definitions/([\w.]+)", text))
    definitions = {name: K8S_STUBS.get(name, {"type": "object"}) for name in names}
    # the two refs into PodSpec / ObjectMeta properties
    definitions["io.k8s.api.core.v1.PodSpec"] = {"properties": {"nodeSelector": {"type": "object"},
                                                                 "tolerations": {"type": "array"}}}
    definitions["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"] = {
        "properties": {"annotations": {"type": "object"}, "labels": {"type": "object"}}}
    return {"definitions": definitions}


def chart_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((CHART / "values.schema.json").read_text())
    registry = Registry().with_resource(K8S_DEFINITIONS, DRAFT7.create_resource(k8s_definitions_document()))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry)


def chart_defaults() -> dict:
    """The chart's values.yaml. The copy in tests/contracts predates the chart's required top-level `ui` key
    (tests/contracts/README.md): the released chart's values.yaml has it, so it is added here, empty."""
    defaults = load_yaml(CHART / "values.yaml")
    defaults.setdefault("ui", {})
    return defaults


def errors_of(values: dict) -> list[str]:
    """Each schema error as `path: message`; an error of an anyOf also lists why each alternative failed."""
    out = []
    for error in chart_validator().iter_errors(values):
        reasons = "; ".join(sub.message for sub in error.context)
        out.append(f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
                   + (f" ({reasons})" if reasons else ""))
    return sorted(out)


def test_the_chart_defaults_alone_validate_apart_from_the_documented_ui_gap():
    raw = load_yaml(CHART / "values.yaml")
    assert errors_of(raw) == ["(top): 'ui' is a required property"]
    assert errors_of(chart_defaults()) == []


def test_the_helm_values_validate_against_the_charts_values_schema():
    merged = helm_merge(chart_defaults(), load_yaml(VALUES))
    assert errors_of(merged) == []
    # the user code deployment list replaced the chart's example instead of adding to it
    assert [d["name"] for d in merged["dagster-user-deployments"]["deployments"]] == ["claro"]


@pytest.mark.parametrize("path, value, complaint", [
    (("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator", "tagConcurrencyLimit"), [],
     "Additional properties are not allowed"),
    (("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator", "tagConcurrencyLimits"),
     [{"key": "claro/source", "value": {"applyLimitPerUniqueValue": "yes"}, "limit": 1}], "is not valid under any"),
    (("dagster-user-deployments", "deployments"), [{"name": "claro", "port": 3030}], "'image' is a required"),
    (("dagster-user-deployments", "deployments"),
     [{"name": "claro", "port": 3030, "image": {"repository": "r", "pullPolicy": "IfNotPresent"},
       "env": [{"value": "prod"}]}], "is not valid under any"),
    (("runLauncher", "type"), "K8sLauncher", "is not one of"),
])
def test_the_schema_check_catches_a_wrong_value(path, value, complaint):
    values = load_yaml(VALUES)
    target = values
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = errors_of(helm_merge(chart_defaults(), values))
    assert problems and any(complaint in problem for problem in problems), problems


# ---------------------------------------------------------------------------------------------------------------
# The instance: the chart's rendering of the values against dagster.prod.yaml
# ---------------------------------------------------------------------------------------------------------------

def chart_run_coordinator(values: dict) -> dict:
    """The run_coordinator block the chart's instance ConfigMap renders from dagsterDaemon.runCoordinator
    (helm/dagster/templates/helpers/instance/_run-coordinator.tpl)."""
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    config = {"max_concurrent_runs": queued["maxConcurrentRuns"],
              "tag_concurrency_limits": queued["tagConcurrencyLimits"]}
    return {"module": "dagster._core.run_coordinator", "class": values["dagsterDaemon"]["runCoordinator"]["type"],
            "config": config}


def chart_instance(values: dict) -> dict:
    """The parts of the dagster.yaml the chart renders (templates/configmap-instance.yaml and its helpers) that
    this project depends on: the three PostgreSQL storages, the run queue, run monitoring and retries, sensors,
    retention and telemetry. The run launcher is left out: K8sRunLauncher needs dagster-k8s, which is in the
    chart's images, not in this project."""
    pg = values["postgresql"]
    db = {"postgres_db": {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
                          "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
                          "port": pg["service"]["port"], "params": pg["postgresqlParams"],
                          "scheme": pg["postgresqlScheme"]}}
    daemon = values["dagsterDaemon"]
    return {
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             "config": db},
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": db},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                              "config": db},
        "run_coordinator": chart_run_coordinator(values),
        "run_monitoring": {"enabled": daemon["runMonitoring"]["enabled"],
                           "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
                           "max_runtime_seconds": daemon["runMonitoring"]["maxRuntimeSeconds"],
                           "poll_interval_seconds": daemon["runMonitoring"]["pollIntervalSeconds"]},
        "run_retries": {"enabled": daemon["runRetries"]["enabled"], "max_retries": daemon["runRetries"]["maxRetries"],
                        "retry_on_asset_or_op_failure": daemon["runRetries"]["retryOnAssetOrOpFailure"]},
        "sensors": {"use_threads": daemon["sensors"]["useThreads"], "num_workers": daemon["sensors"]["numWorkers"]},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "retention": {kind: {"purge_after_days": values["retention"][kind]["purgeAfterDays"]}
                      for kind in ("sensor", "schedule")},
        **chart_python_logs(values),
    }


def chart_python_logs(values: dict) -> dict:
    """The python_logs block the chart renders from pythonLogs (templates/configmap-instance.yaml)."""
    logs = values.get("pythonLogs") or {}
    block = {key: logs[name] for key, name in (("python_log_level", "pythonLogLevel"),
                                               ("dagster_handler_config", "dagsterHandlerConfig"),
                                               ("managed_python_loggers", "managedPythonLoggers")) if logs.get(name)}
    return {"python_logs": block} if block else {}


def test_run_pods_log_json_lines_as_dagster_prod_yaml_says():
    """Run pods get the chart's instance, not the image's dagster.prod.yaml: both must ask for the JSON handler."""
    prod = load_yaml(ROOT / "dagster.prod.yaml")["python_logs"]
    rendered = chart_python_logs(load_yaml(VALUES))["python_logs"]
    assert rendered == prod
    formatter = prod["dagster_handler_config"]["formatters"]["claro_json"]["()"]
    assert formatter == "claro_dagster.run_logs.JsonLineFormatter"


def test_the_run_queue_limits_equal_dagster_prod_yaml():
    values = load_yaml(VALUES)
    prod = load_yaml(ROOT / "dagster.prod.yaml")
    assert values["dagsterDaemon"]["runCoordinator"]["enabled"] is True
    rendered = chart_run_coordinator(values)
    assert rendered["class"] == prod["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert rendered["config"]["tag_concurrency_limits"] == prod["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert rendered["config"]["max_concurrent_runs"] == prod["run_coordinator"]["config"]["max_concurrent_runs"]
    # and the rest of the instance the daemon runs with
    daemon = values["dagsterDaemon"]
    assert daemon["runMonitoring"]["enabled"] == prod["run_monitoring"]["enabled"]
    assert daemon["runMonitoring"]["maxRuntimeSeconds"] == prod["run_monitoring"]["max_runtime_seconds"]
    assert daemon["runRetries"] == {"enabled": prod["run_retries"]["enabled"],
                                    "maxRetries": prod["run_retries"]["max_retries"],
                                    "retryOnAssetOrOpFailure": prod["run_retries"]["retry_on_asset_or_op_failure"]}
    for kind in ("sensors", "schedules"):
        assert daemon[kind] == {"useThreads": prod[kind]["use_threads"], "numWorkers": prod[kind]["num_workers"]}
    assert values["retention"]["sensor"]["purgeAfterDays"] == prod["retention"]["sensor"]["purge_after_days"]
    assert values["telemetry"]["enabled"] == prod["telemetry"]["enabled"]


def test_the_code_server_and_the_chart_point_at_the_same_instance_database():
    values = load_yaml(VALUES)
    prod = load_yaml(ROOT / "dagster.prod.yaml")["storage"]["postgres"]["postgres_db"]
    env = {item["name"]: item["value"] for item in values["dagster-user-deployments"]["deployments"][0]["env"]}
    pg = values["postgresql"]
    assert env["DAGSTER_PG_HOST"] == pg["postgresqlHost"]
    assert env["DAGSTER_PG_USERNAME"] == pg["postgresqlUsername"]
    assert env["DAGSTER_PG_DB"] == pg["postgresqlDatabase"]
    assert pg["service"]["port"] == prod["port"]
    assert pg["postgresqlScheme"] == prod["scheme"]
    assert pg["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def pod_environment(dagster_home: Path) -> dict[str, str]:
    """The code server pod's environment: the image's ENV, the values' env, the chart's DAGSTER_PG_PASSWORD and
    DAGSTER_HOME, and the keys deploy/README.md puts in the claro-secrets secret."""
    values = load_yaml(VALUES)
    env = {item["name"]: item["value"] for item in values["dagster-user-deployments"]["deployments"][0]["env"]}
    env.update({"DAGSTER_HOME": str(dagster_home), "DAGSTER_PG_PASSWORD": "from-dagster-postgresql-secret",
                "CLARO_DATABASE_URL": "postgresql://claro:secret@postgres.claro.internal:5432/claro"})
    return env


def test_the_code_server_pod_environment_passes_the_production_check(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.prod.yaml", home / "dagster.yaml")
    deployment = current_deployment(pod_environment(home))
    assert deployment.production
    values = load_yaml(VALUES)
    env = {item["name"]: item["value"] for item in values["dagster-user-deployments"]["deployments"][0]["env"]}
    assert deployment.max_concurrent_steps == int(env["CLARO_MAX_CONCURRENT_STEPS"])
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "CLARO_DATABASE_URL" in readme and "claro-secrets" in readme and "postgresql-password" in readme


def test_a_run_pod_with_the_charts_instance_passes_the_production_check(tmp_path):
    """Run pods get the chart's rendered dagster.yaml mounted at $DAGSTER_HOME instead of the image's copy."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    yaml = YAML()
    with (home / "dagster.yaml").open("w") as handle:
        yaml.dump(chart_instance(load_yaml(VALUES)), handle)
    assert current_deployment(pod_environment(home)).production


@pytest.fixture
def fresh_database(postgres_server):
    """A database of its own on the test PostgreSQL server, created here and dropped after."""
    url = sa.engine.make_url(postgres_server)
    name = f"claro_deploy_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
def test_dagster_prod_yaml_loads_as_the_instance_on_postgresql(fresh_database, tmp_path, monkeypatch):
    from dagster import DagsterInstance
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator

    home = tmp_path / "dagster_home"
    home.mkdir()
    text = (ROOT / "dagster.prod.yaml").read_text()
    if fresh_database.port and fresh_database.port != 5432:
        # the file names the standard port; a throwaway test server listens elsewhere
        text = text.replace("port: 5432", f"port: {fresh_database.port}")
    (home / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_USERNAME", fresh_database.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", fresh_database.password or "trust-auth-ignores-it")
    monkeypatch.setenv("DAGSTER_PG_HOST", fresh_database.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_DB", fresh_database.database)

    config, _ = dagster_instance_config(str(home))
    assert "postgres" in config["storage"]
    with DagsterInstance.from_config(str(home)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        limits = [dict(limit) for limit in coordinator.get_run_queue_config().tag_concurrency_limits]
        expected = chart_run_coordinator(load_yaml(VALUES))["config"]
        assert limits == expected["tag_concurrency_limits"]
        assert coordinator.get_run_queue_config().max_concurrent_runs == expected["max_concurrent_runs"]
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_runs() == []  # the schema was created in the fresh database and answers
    # the chart's rendering of the values loads too, on the same database (host, port and name pointed at it)
    chart_home = tmp_path / "chart_home"
    chart_home.mkdir()
    rendered = chart_instance(load_yaml(VALUES))
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        rendered[key]["config"]["postgres_db"].update(
            hostname=fresh_database.host or "127.0.0.1", port=fresh_database.port or 5432,
            db_name=fresh_database.database, username=fresh_database.username or "postgres")
    with (chart_home / "dagster.yaml").open("w") as handle:
        YAML().dump(rendered, handle)
    with DagsterInstance.from_config(str(chart_home)) as instance:
        queue = instance.run_coordinator.get_run_queue_config()
        assert [dict(limit) for limit in queue.tag_concurrency_limits] == limits
        assert instance.run_retries_max_retries == 2 and not instance.run_retries_retry_on_asset_or_op_failure
        assert instance.run_monitoring_max_runtime_seconds == 7200
        assert instance.get_runs() == []
    engine = sa.create_engine(fresh_database.set(drivername="postgresql+psycopg"))
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert {"runs", "event_logs"} <= tables


# ---------------------------------------------------------------------------------------------------------------
# The image's command, run for real (outside a container: there is no container runtime here)
# ---------------------------------------------------------------------------------------------------------------

def image_env() -> dict[str, str]:
    final = stages(dockerfile_instructions(ROOT / "Dockerfile"))[-1]
    env: dict[str, str] = {}
    for _, keyword, args in final:
        if keyword == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    return env


def serve_once(env: dict[str, str], workdir: Path):
    """Start the Dockerfile's CMD (on a free loopback port) in `env`, wait until the HEALTHCHECK command passes,
    and return what the server answers to ListRepositories, deserialized, and its output."""
    import socket
    import subprocess

    from dagster._grpc.client import DagsterGrpcClient
    from dagster_shared.serdes import deserialize_value

    final = stages(dockerfile_instructions(ROOT / "Dockerfile"))[-1]
    cmd = exec_form([args for _, keyword, args in final if keyword == "CMD"][-1])
    probe = exec_form([args for _, keyword, args in final if keyword == "HEALTHCHECK"][-1].split("CMD", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd[cmd.index("-p") + 1] = port
    cmd[cmd.index("-h") + 1] = "127.0.0.1"
    probe[probe.index("-p") + 1] = port
    log_path = workdir / f"code-server-{port}.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            def healthy():
                check = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60)
                return check.returncode == 0, check.stdout + check.stderr

            def alive() -> None:
                assert server.poll() is None, log_path.read_text()[-4000:]

            wait_until(healthy, 180, 2, what="the code server's health check", guard=alive)
            answer = deserialize_value(DagsterGrpcClient(port=int(port), host="127.0.0.1").list_repositories())
        finally:
            server.terminate()
            server.wait(timeout=30)
    return answer, log_path.read_text()


@pytest.mark.e2e
@pytest.mark.postgres
def test_the_images_command_serves_the_code_location_in_production_and_passes_its_health_check(
        fresh_database, tmp_path):
    """The Dockerfile's CMD and HEALTHCHECK, run with the image's environment mapped onto this checkout (spec,
    homes) plus the pod's settings (the values' env, catalogue store and instance database on PostgreSQL)."""
    import os
    import sys

    from dagster._grpc.types import ListRepositoriesResponse
    from dagster_shared.error import SerializableErrorInfo

    home = tmp_path / "dagster_home"
    home.mkdir()
    text = (ROOT / "dagster.prod.yaml").read_text()
    if fresh_database.port and fresh_database.port != 5432:
        text = text.replace("port: 5432", f"port: {fresh_database.port}")
    (home / "dagster.yaml").write_text(text)
    values = load_yaml(VALUES)
    env = {**os.environ, **image_env(),
           **{item["name"]: item["value"] for item in values["dagster-user-deployments"]["deployments"][0]["env"]}}
    assert env["CLARO_DEPLOYMENT"] == "prod"
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(home),
        "CLARO_HOME": str(tmp_path / "claro_home"),
        "CLARO_SPEC": str(ROOT / "claro_dagster" / "demo" / "claro.yaml"),
        "DAGSTER_PG_HOST": fresh_database.host or "127.0.0.1",
        "DAGSTER_PG_USERNAME": fresh_database.username or "postgres",
        "DAGSTER_PG_PASSWORD": fresh_database.password or "trust-auth-ignores-it",
        "DAGSTER_PG_DB": fresh_database.database,
    })
    env.pop("CLARO_DATABASE_URL", None)

    # without the claro-secrets secret the server still answers its health check, but the location is an error
    # naming what is missing (the UI shows it)
    answer, _ = serve_once(env, tmp_path)
    assert isinstance(answer, SerializableErrorInfo), answer
    assert "CLARO_DATABASE_URL is not set" in answer.to_string()

    env["CLARO_DATABASE_URL"] = fresh_database.render_as_string(hide_password=False)
    answer, output = serve_once(env, tmp_path)
    assert isinstance(answer, ListRepositoriesResponse), output[-4000:]
    assert [(symbol.repository_name, symbol.attribute) for symbol in answer.repository_symbols] == [
        ("__repository__", "defs")]
    pointer = answer.repository_code_pointer_dict["__repository__"]
    assert pointer.module == "claro_dagster.definitions" and pointer.fn_name == "defs"
