"""Running where users run: `ray job submit` to a `ray start --head`, several nodes, a node lost."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
import yaml

import shards
from shards.options import PreprocessOptions
from shards.synthetic import make_image_folder
from tests.conftest import wait_for_finished_shards

pytestmark = pytest.mark.slow  # starts Ray clusters, jobs or other processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now. The probes stay bound until all are picked: a port
    probed and released at once can come back from the next probe, and a head given the same port
    for two agents does not start (CI saw it once)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("", 0))  # every address: Ray's agents bind the node IP, not only loopback
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def stop_processes_under(folder: str) -> None:
    """Stop the Ray processes of one cluster only (`ray stop` would stop every cluster here), then
    remove its temp folder (logs and sockets, ~3 MB a head)."""
    victims = [p for p in psutil.process_iter(["cmdline"]) if folder in " ".join(p.info["cmdline"] or [])]
    for process in victims:
        process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(victims, timeout=20)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=20)
    shutil.rmtree(folder, ignore_errors=True)


def start_head(*extra: str) -> tuple[dict, str]:
    """`ray start --head` with its own ports (and `extra` arguments); returns (how to reach it:
    the job server's `address`, the cluster's `gcs` address and the client `env`; its temp
    folder). A port picked as free can be taken before the head binds it, so a head that does not
    start is stopped and started again on new ports, three times at most."""
    agents = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "ray-client-server-port",
    )
    env = dict(os.environ, RAY_AUTH_MODE="token")
    for _ in range(3):
        temp = tempfile.mkdtemp(prefix="shards-head-", dir="/tmp")
        port, dashboard, *others = free_ports(2 + len(agents))
        # Every agent gets its own port: the session's cluster already holds Ray's defaults here.
        agent_ports = [f"--{name}={number}" for name, number in zip(agents, others)]
        started = subprocess.run(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--temp-dir={temp}",
                "--disable-usage-stats",
                *agent_ports,
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        if started.returncode == 0:
            return {"address": f"http://127.0.0.1:{dashboard}", "gcs": f"127.0.0.1:{port}", "env": env}, temp
        stop_processes_under(temp)
    pytest.fail(f"`ray start --head` failed 3 times: {started.stderr[-1000:]}")


@pytest.fixture(scope="module")
def ray_head():
    """A head started the way users start one: `ray start --head`, token authentication on.

    A port picked as free can be taken by another process before the head's job agent binds it
    (the agent then stays up without its HTTP server, and every submission is refused), so the
    head is started again on new ports until a trivial job runs.
    """
    for _ in range(3):
        head, temp = start_head()
        result = submit(head, "-c", "pass", wait=60)
        if result.returncode == 0:
            break
        stop_processes_under(temp)
    else:
        pytest.fail(f"no Ray head accepted a job after 3 starts: {result.stderr[-1000:]}")
    yield head
    stop_processes_under(temp)


def test_cluster_yaml_validates_against_rays_schema():
    import ray

    schema_path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    import jsonschema

    config = yaml.safe_load(open(os.path.join(ROOT, "cluster.yaml")))
    jsonschema.validate(config, json.load(open(schema_path)))
    assert {"cpu_preprocess", "gpu_train"} <= set(config["available_node_types"])
    assert config["available_node_types"]["gpu_train"]["resources"]["GPU"] >= 1
    assert any("--dashboard-host=$(hostname -I" in c for c in config["head_start_ray_commands"])


def submit(head, *args, timeout=600, wait=120):
    """`ray job submit`, retried while the head's job agent is still starting (a fresh head says so)."""
    deadline = time.monotonic() + wait
    while True:
        result = subprocess.run(
            [RAY, "job", "submit", "--address", head["address"], "--working-dir", ROOT, "--", sys.executable, *args],
            capture_output=True,
            text=True,
            env=head["env"],
            timeout=timeout,
            cwd=ROOT,
        )
        if "No available agent to submit job" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_a_submitted_preprocess_job_writes_output_that_verifies(ray_head, tmp_path):
    make_image_folder(str(tmp_path / "photos"), 40, classes=2, sizes=(60, 120), seed=9)
    (tmp_path / "photos" / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8 no more")
    dest = str(tmp_path / "out")
    result = submit(
        ray_head, "jobs/preprocess.py", str(tmp_path / "photos"), dest, "--size", "32", "--shard-size", "16KiB"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "progress: 41/41 images" in result.stdout  # progress lines reach `ray job logs`
    assert "succeeded" in result.stdout
    assert shards.open(dest).manifest.count == 40
    from shards.layout.verify import verify_dest

    assert verify_dest(dest).ok

    # The same head runs the training and prediction jobs on that output.
    model, predictions = str(tmp_path / "model.keras"), str(tmp_path / "predictions.parquet")
    result = submit(ray_head, "jobs/train.py", dest, "--epochs", "2", "--batch-size", "8", "--output", model)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "epoch 2:" in result.stdout and os.path.exists(model)
    result = submit(ray_head, "jobs/predict.py", dest, "--model", model, "--out", predictions, "--batch-size", "16")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    import pyarrow.parquet as pq

    table = pq.read_table(predictions)
    assert table.num_rows == 40 and sorted(table.column("row").to_pylist()) == list(range(40))


def test_a_failed_job_exits_non_zero_with_the_reason_in_its_logs(ray_head, tmp_path):
    result = submit(ray_head, "jobs/preprocess.py", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode != 0
    assert "shards: error:" in result.stdout and "no such file or folder" in result.stdout


@pytest.fixture()
def three_nodes():
    host = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_host", "3"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    info = json.loads(host.stdout.readline())
    yield host, info
    if not host.stdin.closed:
        host.stdin.close()
    host.wait(timeout=120)


def test_shard_tasks_spread_over_nodes_and_a_lost_node_costs_only_its_shards(ray_cluster, three_nodes, tmp_path):
    host, info = three_nodes
    make_image_folder(str(tmp_path / "photos"), 240, classes=3, sizes=(900, 1300), seed=6)
    options = PreprocessOptions(size=128, shard_size=128 * 128 * 3 * 8)  # 30 shards of 8
    clean = str(tmp_path / "clean")
    shards.preprocess(str(tmp_path / "photos"), clean, options)
    dest = str(tmp_path / "out")
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shards.cli",
            "preprocess",
            str(tmp_path / "photos"),
            dest,
            "--size",
            "128",
            "--shard-size",
            str(options.shard_size),
            "--address",
            info["address"],
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_finished_shards(dest, 6, driver)
    host.stdin.write("remove\n")
    host.stdin.flush()
    assert json.loads(host.stdout.readline()) == {"removed": True}
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-3000:]
    manifest = json.load(open(os.path.join(dest, "manifest.json")))
    nodes = set(manifest["run"]["nodes"].values())
    assert len(nodes) >= 2 and nodes <= set(info["nodes"])  # tasks ran on several nodes
    for name in os.listdir(clean):
        if name.startswith("shard-"):
            assert open(os.path.join(dest, name), "rb").read() == open(os.path.join(clean, name), "rb").read()


def readme_block_after(heading: str) -> str:
    """The first ``` block of README.md after `heading`."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index(heading) :]
    start = section.index("```")
    start = section.index("\n", start) + 1
    return section[start : section.index("```", start)]


def test_the_readme_recipe_for_a_cluster_on_one_machine_runs_as_written(tmp_path):
    """The recipe, run by bash as it is printed, in a home of its own (where `ray start` writes
    its token and the photos are), from the clone's folder with this environment on PATH."""
    recipe = readme_block_after("### A cluster on this machine")
    make_image_folder(str(tmp_path / "photos"), 24, classes=2, sizes=(60, 120), seed=11)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(HOME=str(tmp_path), PATH=os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]]))
    result = subprocess.run(["bash", "-c", recipe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    said = result.stdout[-3000:] + result.stderr[-3000:]
    try:
        for run in ("photos-cluster", "photos-joined"):
            assert (tmp_path / run / "manifest.json").is_file(), said
            assert len(shards.open(str(tmp_path / run))) == 24 and cli_verify(str(tmp_path / run)), run
        assert (tmp_path / "cluster-model.keras").is_file(), said
        # `kill %1` stopped the head's processes, and only them (the session's Ray is not touched).
        left = [p for p in psutil.process_iter(["cmdline"]) if ":6390" in " ".join(p.info["cmdline"] or [])]
        assert not left, [p.info["cmdline"][:2] for p in left]
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if ":6390" in " ".join(process.info["cmdline"] or []):
                process.kill()


def cli_verify(dest: str) -> bool:
    return subprocess.run([sys.executable, "-m", "shards.cli", "verify", dest], capture_output=True).returncode == 0
