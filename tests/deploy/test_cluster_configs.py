"""The deploy/ configs, checked offline with Ray's own code and by running their commands.

Nothing here reaches a cloud or a Kubernetes API. The cluster-launcher YAMLs go through
Ray's ``prepare_config`` and ``validate_config`` (``ray-schema.json`` plus Ray's own
checks), as ``ray up`` does before it contacts the provider; the RayCluster goes through the
code with which Ray's KubeRay autoscaler reads it. The commands a node would run are
executed by bash in a throw-away HOME, wrapped exactly as Ray's SSH runner wraps them,
against stub ``ray`` and ``dynams`` programs that record their arguments; the arguments
are then parsed by ``ray start``'s own click parser and the ``dynams`` CLI parser.
"""

from __future__ import annotations

import copy
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray._common.usage import usage_constants
from ray.autoscaler._private.command_runner import (
    _with_environment_variables,
    _with_interactive,
)
from ray.autoscaler._private.constants import RESOURCES_ENVIRONMENT_VARIABLE
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import (
    prepare_config,
    validate_config,
    with_envs,
    with_head_node_ip,
)
from ray.scripts.scripts import start as ray_start
from ray.scripts.scripts import status as ray_status

from dynams_service import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
LAUNCHER_CONFIGS = ["aws-gpu.yaml", "onprem.yaml"]
HEAD_IP = "10.0.0.10"  # what the autoscaler exports as RAY_HEAD_IP to workers
POD_IP = "10.1.2.3"  # what Kubernetes gives the head pod as status.podIP
SELECTOR_PORT = "50051"
RECORDED_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_HEAD_IP",
                RESOURCES_ENVIRONMENT_VARIABLE)
STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
                          "env": {{k: os.environ.get(k) for k in {keys!r}}}}}) + "\\n")
"""


class Sandbox:
    """A throw-away HOME whose PATH starts with stub ``ray`` and ``dynams`` programs."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.log = root / "calls.jsonl"
        stubs = root / "stubs"
        stubs.mkdir(parents=True)
        self.home.mkdir()
        for name in ("ray", "dynams"):
            stub = stubs / name
            stub.write_text(STUB.format(python=sys.executable, keys=RECORDED_ENV))
            stub.chmod(0o755)
        # Login shells read ~/.bash_profile; Ray's runner also sources ~/.bashrc.
        for rc in (".bashrc", ".bash_profile"):
            (self.home / rc).write_text(f'export PATH="{stubs}:$PATH"\n')
        # Where file_mounts put this repository (its deploy/ scripts are run from there).
        (self.home / "dynams-service").symlink_to(DEPLOY.parent, target_is_directory=True)

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Run one command as a node would; it must succeed."""
        proc = subprocess.run(
            argv, cwd=self.home, capture_output=True, text=True, timeout=60, check=False,
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin", "TERM": "dumb",
                 "STUB_LOG": str(self.log), **(env or {})})
        assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"

    def run_as_ray_updater(self, command: str, env: dict[str, Any]) -> None:
        """Run a start command wrapped as Ray's SSH runner sends it (login shell, env)."""
        wrapped = _with_interactive(_with_environment_variables(command, env))
        self.run(["bash", "-c", " ".join(wrapped)])

    def wait_for_exit(self, pid: int, timeout: float = 60) -> None:
        """Wait until a process that a command started in the background has finished."""
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def calls(self) -> list[dict[str, Any]]:
        """Every stub invocation so far: argv (program name first) and chosen env vars."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def load_launcher(name: str) -> dict[str, Any]:
    """A cluster-launcher YAML as ``ray up`` holds it after preparation and validation."""
    config = prepare_config(yaml.safe_load((DEPLOY / name).read_text()))
    validate_config(config)
    return config


def this_machine_ip() -> str:
    """What ``hostname -I | awk '{print $1}'`` prints here (the commands use it)."""
    return subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def find(calls: list[dict], *prefix: str) -> list[tuple[int, dict]]:
    """The recorded calls whose argv starts with ``prefix``, with their positions."""
    return [(i, c) for i, c in enumerate(calls) if c["argv"][:len(prefix)] == list(prefix)]


def parse_ray_start(call: dict) -> dict[str, Any]:
    """Parse a recorded ``ray start`` with Ray's own click command (nothing is started)."""
    return ray_start.make_context("start", call["argv"][2:]).params


def parse_serve(call: dict):
    """Parse a recorded ``dynams serve`` with the real ``dynams`` parser."""
    args = cli.build_parser().parse_args(call["argv"][1:])
    assert args.func is cli._serve
    return args


def resources_env(config: dict, node_type: str) -> dict[str, Any]:
    """The env Ray's updater adds to a node's start commands (resources: not for ``local``)."""
    env: dict[str, Any] = {usage_constants.USAGE_STATS_ENABLED_ENV_VAR: 0}
    resources = config["available_node_types"][node_type].get("resources")
    if config["provider"]["type"] != "local" and resources:
        env[RESOURCES_ENVIRONMENT_VARIABLE] = resources
    return env


def worker_type(config: dict) -> str:
    """The (single) worker node type of a config."""
    workers = [t for t in config["available_node_types"] if t != config["head_node_type"]]
    return workers[0] if workers else config["head_node_type"]


# --- cluster-launcher configs -------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_validation(name):
    config = load_launcher(name)
    raw = yaml.safe_load((DEPLOY / name).read_text())
    assert config["cluster_name"].startswith("dynams")
    if raw["provider"]["type"] == "aws":
        head = config["available_node_types"]["head"]
        gpu = config["available_node_types"]["gpu-worker"]
        assert head["resources"] == {"CPU": 0}  # the selector's head runs no scorer
        assert gpu["resources"]["GPU"] >= 1 and 0 <= gpu["min_workers"] <= gpu["max_workers"]
        assert gpu["max_workers"] <= config["max_workers"]
        rule = raw["provider"]["security_group"]["IpPermissions"][0]
        assert rule["FromPort"] == rule["ToPort"] == int(SELECTOR_PORT)
    else:
        node = config["available_node_types"][config["head_node_type"]]
        assert node["min_workers"] == node["max_workers"] == len(raw["provider"]["worker_ips"])
    # Validation has teeth: a misspelt field is refused by Ray's schema.
    broken = copy.deepcopy(config)
    broken["head_start_commands"] = broken.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_setup_installs_this_package_and_the_same_ray(name):
    config = load_launcher(name)
    mounts = dict(config["file_mounts"])
    repo_target = next(remote for remote, local in mounts.items() if local in (".", "./"))
    installs = [c for c in config["head_setup_commands"] if "pip install" in c]
    # Head and workers install the same things (the head adds boto3 for the autoscaler).
    assert [c for c in installs if "boto3" not in c] == [
        c for c in config["worker_setup_commands"] if "pip install" in c]
    package = [c for c in installs if repo_target in c.split()]
    assert package, f"no setup command installs {repo_target}"
    assert f'"ray[default]=={ray.__version__}"' in package[0]
    # The Ray cluster token and the selector token reach every node.
    assert "~/.ray/auth_token" in mounts and "~/dynams/selector-token" in mounts


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_head_commands_start_ray_then_the_selector(name, tmp_path):
    config = load_launcher(name)
    head_type = config["head_node_type"]
    commands = with_envs(config["head_start_ray_commands"], {  # as `ray up` adds them
        "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": "i-test",
        "RAY_NODE_TYPE_NAME": head_type})
    box = Sandbox(tmp_path)
    for command in commands:
        box.run_as_ray_updater(command, resources_env(config, head_type))
    box.wait_for_exit(int((box.home / "dynams" / "serve.pid").read_text()))  # nohup ... &
    calls = box.calls()

    (stop_at, _), = find(calls, "ray", "stop")
    (start_at, start), = find(calls, "ray", "start")
    (serve_at, serve), = find(calls, "dynams", "serve")
    assert stop_at < start_at < serve_at
    params = parse_ray_start(start)
    assert params["head"] and params["port"] == 6379
    assert params["autoscaling_config"].endswith("ray_bootstrap_config.yaml")
    assert params["dashboard_host"] == "127.0.0.1" and params["metrics_export_port"] == 8080
    assert start["env"]["RAY_AUTH_MODE"] == "token"
    if config["provider"]["type"] == "local":
        assert params["num_cpus"] == 0 and params["num_gpus"] == 0
    else:
        overridden = json.loads(start["env"][RESOURCES_ENVIRONMENT_VARIABLE])
        assert overridden == {"CPU": 0}

    args = parse_serve(serve)
    ip = this_machine_ip()
    assert args.address == f"{ip}:{SELECTOR_PORT}"  # the head's address, not loopback
    assert args.ray_address == f"{ip}:{params['port']}"  # the cluster just started
    assert "~/dynams/selector-token" in config["file_mounts"]  # where `ray up` puts it
    assert Path(args.token_file) == box.home / "dynams" / "selector-token"
    assert Path(args.state_dir).is_dir() and box.home in Path(args.state_dir).parents
    assert serve["env"]["RAY_AUTH_MODE"] == "token"
    assert (box.home / "dynams" / "selector-address").read_text().strip() == args.address
    assert (box.home / "dynams" / "serve.pid").read_text().strip().isdigit()
    assert (box.home / "dynams" / "stop-with-ray.log").exists()  # its watcher was started


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_login_shells_on_every_node_use_token_auth(name, tmp_path):
    """`ray status` typed on the head (or sent by `ray exec`) talks token auth as the
    start commands do: the setup puts RAY_AUTH_MODE in ~/.bashrc, not only in them."""
    config = load_launcher(name)
    box = Sandbox(tmp_path)
    for command in config["setup_commands"]:
        if "~/.bashrc" in command:  # the others install packages
            box.run(["bash", "-c", command])
            box.run(["bash", "-c", command])  # a second `ray up` adds nothing
    assert (box.home / ".bashrc").read_text().count("RAY_AUTH_MODE") == 1
    box.run_as_ray_updater("ray status", {})
    (_, status), = find(box.calls(), "ray", "status")
    assert status["env"]["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_the_selector_is_stopped_with_the_heads_ray(name):
    """`ray down` runs only `ray stop` on the head: a watcher started beside the selector
    must end it (see test_stop_with_ray_*)."""
    config = load_launcher(name)
    serve = next(c for c in config["head_start_ray_commands"] if "dynams serve" in c)
    mount = next(remote for remote, local in config["file_mounts"].items() if local in (".", "./"))
    assert f"{mount}/deploy/stop-with-ray.sh" in serve
    assert '"$(cat ~/dynams/serve.pid)" "$HEAD_IP:6379"' in serve
    assert serve.index("serve.pid;") < serve.index("stop-with-ray.sh")


def _watch(selector_pid: int, port: int) -> subprocess.Popen:
    """deploy/stop-with-ray.sh on a fast clock: probes every 0.2 s, gives up after 2."""
    return subprocess.Popen(
        ["bash", str(DEPLOY / "stop-with-ray.sh"), str(selector_pid), f"127.0.0.1:{port}",
         "0.2", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_stop_with_ray_stops_the_selector_once_the_gcs_port_closes():
    gcs = socket.create_server(("127.0.0.1", 0))  # stands in for Ray's GCS
    selector = subprocess.Popen(["sleep", "120"])
    watcher = _watch(selector.pid, gcs.getsockname()[1])
    try:
        time.sleep(1.5)
        assert selector.poll() is None, "stopped while Ray was still up"
        assert watcher.poll() is None
        gcs.close()  # `ray stop`
        assert selector.wait(timeout=10) == -signal.SIGTERM
        assert watcher.wait(timeout=10) == 0
        assert "is gone: stopping the selector" in watcher.stdout.read()
    finally:
        gcs.close()
        for proc in (selector, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stop_with_ray_exits_when_the_selector_exits_first():
    gcs = socket.create_server(("127.0.0.1", 0))
    selector = subprocess.Popen(["sleep", "0.5"])
    watcher = _watch(selector.pid, gcs.getsockname()[1])
    try:
        assert selector.wait(timeout=10) == 0
        assert watcher.wait(timeout=10) == 0
        assert watcher.stdout.read() == ""
    finally:
        gcs.close()
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_worker_commands_join_the_head_and_start_no_selector(name, tmp_path):
    config = load_launcher(name)
    box = Sandbox(tmp_path)
    node_type = worker_type(config)
    for command in with_head_node_ip(config["worker_start_ray_commands"], HEAD_IP):
        box.run_as_ray_updater(command, resources_env(config, node_type))
    calls = box.calls()
    assert not find(calls, "dynams")
    (_, start), = find(calls, "ray", "start")
    params = parse_ray_start(start)
    assert not params["head"] and params["address"] == f"{HEAD_IP}:6379"
    assert params["metrics_export_port"] == 8080 and start["env"]["RAY_AUTH_MODE"] == "token"
    if config["provider"]["type"] != "local":
        resources = json.loads(start["env"][RESOURCES_ENVIRONMENT_VARIABLE])
        assert resources == config["available_node_types"][node_type]["resources"]


# --- KubeRay manifest -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    """deploy/kuberay.yaml's objects by kind."""
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["PersistentVolumeClaim", "RayCluster", "Service"]
    return by_kind


def _containers(group: dict) -> list[dict]:
    """The containers of a head or worker group's pod template."""
    return group["template"]["spec"]["containers"]


def _literal_env(container: dict) -> dict[str, str]:
    """A container's env as the kubelet would set it (pod IP resolved to ``POD_IP``)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            env[var["name"]] = POD_IP
    return env


def _gen_ray_start(group: dict, head: bool) -> str:
    """KubeRay's generated ``ray start`` for a group (what $KUBERAY_GEN_RAY_START_CMD holds)."""
    params = " ".join(f"--{k}={v}" for k, v in group["rayStartParams"].items())
    where = "--head" if head else f"--address={POD_IP}:6379"
    return f"ray start {where} {params} --block"


def test_raycluster_is_what_rays_kuberay_autoscaler_accepts(manifest):
    cluster = manifest["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    derived = _derive_autoscaling_config_from_ray_cr(copy.deepcopy(cluster))  # validates
    types = derived["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    gpu = types["gpu"]
    assert gpu["resources"]["GPU"] == 1 and (gpu["min_workers"], gpu["max_workers"]) == (1, 8)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-", dockerfile, re.M)


def test_manifest_objects_refer_to_each_other(manifest):
    spec = manifest["RayCluster"]["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    images = {_containers(g)[0]["image"] for g in groups}
    assert len(images) == 1
    head = _containers(spec["headGroupSpec"])[0]  # KubeRay: the Ray container comes first
    for group in groups:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            names = [p["name"] for p in container.get("ports", [])]
            assert len(names) == len(set(names))
            assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", n) for n in names)
            assert {m["name"] for m in container.get("volumeMounts", [])} <= set(volumes)
    claim = {v["name"]: v for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
    assert claim["state"]["persistentVolumeClaim"]["claimName"] == \
        manifest["PersistentVolumeClaim"]["metadata"]["name"]
    service = manifest["Service"]["spec"]
    assert service["selector"] == {"ray.io/cluster": manifest["RayCluster"]["metadata"]["name"],
                                   "ray.io/node-type": "head"}
    (port,) = service["ports"]
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert head_ports[port["targetPort"]] == port["port"] == int(SELECTOR_PORT)


def test_head_pod_command_starts_ray_then_the_selector(manifest, tmp_path):
    head_group = manifest["RayCluster"]["spec"]["headGroupSpec"]
    head = _containers(head_group)[0]
    mounts = {m["name"]: Path(m["mountPath"]) for m in head["volumeMounts"]}
    box = Sandbox(tmp_path)
    box.run([*head["command"], *head["args"]],
            {**_literal_env(head), "KUBERAY_GEN_RAY_START_CMD": _gen_ray_start(head_group, True)})
    calls = box.calls()
    (_, start), = find(calls, "ray", "start")
    (status_at, status), = find(calls, "ray", "status")
    (serve_at, serve), = find(calls, "dynams", "serve")
    assert status_at < serve_at  # the selector waits until Ray answers
    assert ray_status.make_context("status", status["argv"][2:]).params["address"] == \
        f"{POD_IP}:6379"
    params = parse_ray_start(start)
    assert params["head"] and params["block"] and params["num_cpus"] == 0
    assert params["metrics_export_port"] == 8080
    args = parse_serve(serve)
    assert args.address == f"{POD_IP}:{SELECTOR_PORT}"
    assert args.ray_address == f"{POD_IP}:6379"
    assert mounts["tokens"] in Path(args.token_file).parents
    assert mounts["state"] in Path(args.state_dir).parents
    for call in (start, serve):
        assert call["env"]["RAY_AUTH_MODE"] == "token"
        assert mounts["tokens"] in Path(call["env"]["RAY_AUTH_TOKEN_PATH"]).parents


def test_worker_pod_command_starts_only_ray(manifest, tmp_path):
    group = manifest["RayCluster"]["spec"]["workerGroupSpecs"][0]
    worker = _containers(group)[0]
    box = Sandbox(tmp_path)
    box.run([*worker["command"], *worker["args"]],
            {**_literal_env(worker), "KUBERAY_GEN_RAY_START_CMD": _gen_ray_start(group, False)})
    calls = box.calls()
    assert not find(calls, "dynams")
    (_, start), = find(calls, "ray", "start")
    params = parse_ray_start(start)
    assert params["block"] and params["address"] == f"{POD_IP}:6379"
    assert start["env"]["RAY_AUTH_MODE"] == "token"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
