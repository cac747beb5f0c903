"""``analyze --engine ray``: the same tables as the local engine, sharding and merge, a worker killed
mid-run, the driver killed with kill -9, and bad input.

Small on purpose (the suite runs on 2 shared cores): one Ray instance for the module (2 CPUs, no
dashboard, a small object store), tiny models, a dozen examples, 2 workers of 1 thread; the two
subprocess drivers start their own private Ray instance only where the test is about that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'attnexplain[ray]'")

from attnexplain.runs import merge_runs, open_run  # noqa: E402
from attnexplain.runs.analyze import analyze  # noqa: E402
from attnexplain.runs.settings import AnalyzeError  # noqa: E402

from test_runs import METHODS, N, _assert_same, _lm, _write_csv  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _no_fsync():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNEXPLAIN_FSYNC", "0")
        yield


@pytest.fixture(scope="module")
def cluster(_no_fsync):
    """One private Ray instance for the module (stopped at the end: no Ray process outlives it)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=96 * 1024**2,
             log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def lm():
    return _lm()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_csv(tmp_path_factory.mktemp("data") / "tiny.csv")


def _run(lm, data, out, **kw):
    opts = dict(model=lm, dataset=str(data), split="all", batch_size=2, store_attention=3, progress=False,
                log=lambda m: None, methods=METHODS)
    opts.update(kw)
    return analyze(out, **opts)


@pytest.fixture(scope="module")
def reference(lm, data, tmp_path_factory):
    return _run(lm, data, tmp_path_factory.mktemp("ref") / "local")


def _ids_once(run, n=N):
    ids = run.examples()["example_id"].tolist()
    assert len(ids) == len(set(ids)) == n, "every example exactly once"
    for t in ("tokens", "faithfulness", "heads"):
        assert set(getattr(run, t)()["example_id"]) == set(ids)
    return ids


# --------------------------------------------------------------------------------------------
# same tables as the local engine; --shard and merge
# --------------------------------------------------------------------------------------------


def test_ray_run_equals_the_local_run(cluster, lm, data, reference, tmp_path):
    run = _run(lm, data, tmp_path / "ray", engine="ray", num_workers=2, worker_threads=1)
    assert run.is_complete
    assert _ids_once(run) == _ids_once(reference)
    _assert_same(run, reference, exact=False)  # values within 1e-6 (rtol 1e-4)
    eng = run.manifest["engine"]
    assert eng["name"] == "ray" and eng["num_workers"] == 2 and eng["worker_threads"] == 1
    assert reference.manifest["engine"]["name"] == "local"
    assert run.stored_examples() == reference.stored_examples()
    for eid in run.stored_examples():
        a, b = run.attention(eid), reference.attention(eid)
        assert sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)


# --------------------------------------------------------------------------------------------
# a worker killed mid-run (on a --shard run, then merged with a local shard)
# --------------------------------------------------------------------------------------------


def _alive_worker_pids() -> list[int]:
    """PIDs of the live analyze workers, from Ray's actor table (the GCS)."""
    from ray._private import state

    return sorted(int(a["Pid"]) for a in state.actors().values()
                  if a.get("State") == "ALIVE" and a.get("ActorClassName", "").endswith("ShardWorker") and a.get("Pid"))


def test_a_worker_killed_mid_run_is_restarted_and_shards_merge(cluster, lm, data, reference, tmp_path):
    seen: list[list[int]] = []
    killed: list[int] = []

    def kill_one(number, start, size):
        pids = _alive_worker_pids()
        seen.append(pids)
        if not killed:  # after the first batch: both workers still hold queued batches (2 in flight each)
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    s0 = _run(lm, data, tmp_path / "s0", shard="0/2", batch_size=1, engine="ray", num_workers=2, on_batch=kill_one)
    assert killed and s0.is_complete and s0.manifest["shard"] == "0/2"
    _ids_once(s0, N // 2)
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert any(set(p) - set(seen[0]) for p in seen[1:]), f"no restarted worker seen: {seen}"
    s1 = _run(lm, data, tmp_path / "s1", shard="1/2")
    merged = merge_runs([s1.path, s0.path], tmp_path / "merged", log=lambda m: None)
    _ids_once(merged)
    _assert_same(merged, reference, exact=False)


# --------------------------------------------------------------------------------------------
# the driver killed with kill -9 (a subprocess with its own private Ray instance)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny classifier saved in a folder (a name the subprocess driver and the workers can load)."""
    from attnexplain.training.finetune import prepare_tiny

    return prepare_tiny("synthetic-negation", epochs=1, limit=64, threads=1,
                        out_dir=tmp_path_factory.mktemp("models") / "tiny-neg")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from attnexplain.cli.main import app; app()", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "ATTNEXPLAIN_FSYNC": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _session_processes(sid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def test_driver_killed_with_kill_9_then_the_same_command_resumes(cluster, model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["analyze", "--dataset", "synthetic-negation", "--split", "test", "--limit", "16", "--batch-size", "2",
            "--model", str(model_dir), "--methods", "raw_attention,random", "--store-attention", "2",
            "--out", str(out), "--no-progress", "--engine", "ray", "--num-workers", "2"]
    proc = subprocess.Popen(_cli(*args), env=_env(), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if len(list((out / "shards").glob("examples-*.parquet"))) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.kill()  # SIGKILL: no clean-up of any kind in the driver
        proc.wait(30)
        # the private Ray instance and its workers die with the driver
        deadline = time.time() + 30
        while time.time() < deadline and _session_processes(proc.pid):
            time.sleep(0.5)
        left = _session_processes(proc.pid)
        assert not left, f"Ray processes outlived the killed driver: {left}"
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.stderr.close()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    # the same request again (here joining this module's cluster: no second Ray start-up)
    run = analyze(out, model=str(model_dir), dataset="synthetic-negation", split="test", limit=16, batch_size=2,
                  methods=["raw_attention", "random"], store_attention=2, progress=False, log=lambda m: None,
                  engine="ray", num_workers=2)
    assert run.is_complete and run.manifest.get("resumed")
    _ids_once(run, 16)
    assert sorted(run.examples()["index"]) == list(range(16))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_bad_ray_options_fail_fast_with_clear_errors(lm, data, tmp_path):
    from typer.testing import CliRunner

    from attnexplain.cli.main import app

    common = ["analyze", "--dataset", str(data), "--split", "all", "--out", str(tmp_path / "r"), "--model", "tiny"]
    runner = CliRunner()
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    cases = [
        (["--engine", "ray", "--num-workers", "0"], "--num-workers must be >= 1"),
        (["--engine", "ray", "--worker-threads", "0"], "--worker-threads must be >= 1"),
        # a private instance is this machine: more workers x threads than its cores is refused up front
        (["--engine", "ray", "--num-workers", str(2 * (os.cpu_count() or 1))], "Lower --num-workers"),
        (["--engine", "ray", "--num-workers", "1", "--worker-threads", str((os.cpu_count() or 1) + 1)],
         "Lower --num-workers or --worker-threads"),
        (["--engine", "ray", "--address", f"127.0.0.1:{free}"], "cannot reach a Ray cluster"),
        (["--engine", "ray", "--address", "10.255.255.1:6379"], "cannot reach a Ray cluster"),  # no route: times out
        (["--engine", "ray", "--address", "nohost"], "--address must be auto, HOST:PORT"),
        (["--engine", "spark"], "--engine must be one of local, ray"),
        (["--num-workers", "2"], "options of --engine ray"),
    ]
    for extra, message in cases:
        t0 = time.perf_counter()
        res = runner.invoke(app, common + extra)
        assert res.exit_code == 2, (extra, res.output)
        assert message in res.output and "Traceback" not in res.output, (extra, res.output)
        assert time.perf_counter() - t0 < 30, f"{extra} took {time.perf_counter() - t0:.0f} s"
    assert not (tmp_path / "r").exists()


def test_missing_ray_names_the_extra(monkeypatch):
    from attnexplain.runs.ray_engine import RaySession

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(AnalyzeError, match=r"attnexplain\[ray\]"):
        RaySession()


def test_worker_checks_the_run_folder(tmp_path):
    """The check every worker runs at start (here called directly): a folder it does not see, another
    run at the same path, a folder it cannot write."""
    from attnexplain.runs.ray_engine import ShardWorker

    folder = tmp_path / "run"
    w = ShardWorker(1)
    job = {"folder": str(folder), "created": "2026-01-01T00:00:00", "methods": METHODS, "setup": {},
           "backend": "dense", "backend_options": {}}
    with pytest.raises(AnalyzeError, match="cannot read the run folder.*every Ray node mounts"):
        w._check_folder(job)
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"created": "1999-01-01T00:00:00"}))
    with pytest.raises(AnalyzeError, match="sees another run folder"):
        w._check_folder(job)
    (folder / "manifest.json").write_text(json.dumps({"created": "2026-01-01T00:00:00"}))
    (folder / "shards").write_text("a file where the shards folder should be")  # unwritable, even for root
    with pytest.raises(AnalyzeError, match="cannot write the run folder"):
        w._check_folder(job)
    (folder / "shards").unlink()
    (folder / "shards").mkdir()
    w._check_folder(job)
    assert list((folder / "shards").iterdir()) == []  # the probe is gone


def _unshare_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    res = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return res.returncode == 0


def test_a_run_folder_the_workers_cannot_use_is_refused(cluster, model_dir, tmp_path):
    """The driver writes the run folder where the workers cannot: as root, in a private mount
    namespace (a tmpfs the workers do not see, like a local folder on a multi-machine cluster);
    otherwise, a shards folder without write permission."""
    out = tmp_path / "private" / "run"
    args = ["analyze", "--dataset", "synthetic-negation", "--split", "test", "--limit", "4", "--batch-size", "2",
            "--model", str(model_dir), "--methods", "random", "--out", str(out), "--no-progress",
            "--engine", "ray", "--num-workers", "1", "--address", cluster]
    (tmp_path / "private").mkdir()
    if _unshare_works():
        cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(tmp_path / "private"),
               *_cli(*args)]
        expect = "cannot read the run folder"
    elif os.geteuid() != 0:
        # an interrupted run whose shards folder the workers (same user, but no write permission) cannot write
        analyze(out, model=str(model_dir), dataset="synthetic-negation", split="test", limit=4, batch_size=2,
                methods=["random"], progress=False, log=lambda m: None, on_batch=_interrupt)
        (out / "shards").chmod(0o555)
        cmd = _cli(*args)
        expect = "cannot write the run folder"
    else:
        pytest.skip("root without mount namespaces: no folder the workers cannot write")
    try:
        res = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    finally:
        if (out / "shards").exists():
            (out / "shards").chmod(0o755)
    assert res.returncode == 2, res.stderr[-3000:]
    assert expect in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]


def _interrupt(number, start, size):
    raise KeyboardInterrupt


def test_no_ray_process_is_left(cluster):
    """Every analyze call above killed its workers (the module's Ray instance stops after this)."""
    assert _alive_worker_pids() == []


def test_private_instance_workers_run_at_normal_priority():
    """Ray starts its workers at niceness 15 by default: on a busy machine any other process (even
    Ray's own daemons) then takes their cores first. A private instance sets WORKER_NICENESS (0,
    as the local engine runs; relative to the driver's own niceness); checked in a fresh process (this
    module's own Ray instance is started by the test, not by RaySession). The same fresh instance
    starts none of the head processes analyze never uses (autoscaler monitor, log monitor, dashboard:
    each a Python process that takes the workers' cores while they start), and a run's workers still
    start and answer."""
    from attnexplain.runs.ray_engine import WORKER_NICENESS

    code = (
        "import os\n"
        "from pathlib import Path\n"
        "from attnexplain.runs.ray_engine import RaySession, _descendants\n"
        "with RaySession(num_workers=1, worker_threads=1, log=lambda m: None) as s:\n"
        "    f = s.ray.remote(num_cpus=1)(lambda: os.nice(0))\n"
        "    print('NICENESS', s.ray.get(f.remote()) - os.nice(0))\n"
        "    for pid, _ in _descendants(os.getpid()):\n"
        "        try:\n"
        "            print('PROCESS', Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ').decode()[:300])\n"
        "        except OSError:\n"
        "            pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"NICENESS {WORKER_NICENESS}" in out.stdout, out.stdout[-500:]
    processes = [line for line in out.stdout.splitlines() if line.startswith("PROCESS")]
    assert any("gcs_server" in p for p in processes) and any("raylet" in p for p in processes), processes
    for unused in ("autoscaler/_private/monitor.py", "_private/log_monitor.py", "dashboard/dashboard.py"):
        assert not any(unused in p for p in processes), f"{unused} runs: {processes}"


def test_session_start_loads_the_model_in_the_workers_while_the_driver_works(cluster, model_dir):
    """RaySession.start (what analyze calls before loading its own copy of the model) connects in the
    background and has each worker load the model at once: by the time the run hands the workers
    over, their model is loaded (a second load is free); a different model is not handed over (the
    workers are stopped) and the session leaves no worker behind."""
    from attnexplain.runs.ray_engine import RaySession

    session = RaySession(num_workers=2, worker_threads=1, log=lambda m: None)
    session.start(model=str(model_dir))
    with session:
        assert session.info["num_workers"] == 2
        workers = session.take_workers(str(model_dir), "dense", {})
        assert len(workers) == 2
        assert ray.get([w.load.remote(str(model_dir), "dense", {}) for w in workers], timeout=120) == [0.0, 0.0]
        assert session.take_workers(str(model_dir), "dense", {}) == []  # handed over once
        session.workers = workers  # closing the session stops them
    _assert_no_worker_left()
    other = RaySession(num_workers=1, worker_threads=1, log=lambda m: None)
    other.start(model=str(model_dir))
    with other:
        assert other.take_workers("another-model", "dense", {}) == []
    _assert_no_worker_left()


def _assert_no_worker_left(seconds: float = 20.0) -> None:
    """ray.kill is asynchronous: the actor table says DEAD shortly after."""
    deadline = time.time() + seconds
    while _alive_worker_pids() and time.time() < deadline:
        time.sleep(0.2)
    assert _alive_worker_pids() == []
