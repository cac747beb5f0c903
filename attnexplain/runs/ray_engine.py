"""The Ray engine of ``attnexplain analyze --engine ray``: the same batches, shards and run folder
as the local engine, computed by a pool of Ray actors.

>>> analyze("runs/rt", model="minilm-rotten-tomatoes", dataset="rotten-tomatoes", engine="ray",
...         num_workers=4, worker_threads=2)               # a private Ray instance on this machine
>>> analyze(..., engine="ray", address="auto")             # the cluster `ray start` runs here

How a run goes (the actor-pool pattern of Ray's batch inference: the model is loaded once per
worker, not once per batch):

1. the driver (the ``analyze`` process) checks the request and reads the data set; then it starts
   connecting to Ray in the background (:meth:`RaySession.start`: a private instance is started
   without the head processes a run never uses, see :func:`_lean_head`) and, for a model given by
   name, creates ``num_workers`` actors (:class:`ShardWorker`, ``worker_threads`` Ray CPUs and torch
   threads each) that start importing torch and loading the model at once; meanwhile the driver does
   everything the local engine does before the first batch: loads the model (labels, maximum length,
   the faithfulness precision), opens the run folder (lock, manifest, resume scan);
2. each worker (created now, for a model object: the driver's object through the object store)
   checks that it sees the run folder (the manifest the driver just wrote, same ``created`` stamp)
   and can write into it;
3. the driver sends each worker the inputs of the next batch (ids, texts, labels: a few KB) as soon
   as it has fewer than two in flight; the worker runs :func:`attnexplain.runs.analyze.run_batch`
   (the same code, the same per-batch seed as the local engine) and writes the batch's shard
   itself with :meth:`RunWriter.write_batch` (atomic files, the examples shard last as the commit
   record), then returns a small receipt (ids, truncation count, pid, host);
4. the driver counts receipts into the progress bar (with ETA) and, when every batch is in,
   merges the shards into the final tables exactly as the local engine does.

Failures: a worker process that dies (killed, out of memory, node lost) is restarted by Ray
(``max_restarts``) and its unfinished batches are run again (``max_task_retries``); rewriting a
batch replaces its files atomically with the same content, so each example is in the final
tables once. If the driver dies (``kill -9``), the workers die with it and the next run of the same
command resumes from the committed shards, like the local engine. The run folder must be a path
that every node sees (one machine; or NFS / a shared mount at the same path on every node).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..models import load_model_for_run
from .batch import batch_inputs, build_setup, run_batch
from .settings import AnalyzeError
from .writer import RunWriter

__all__ = ["RaySession", "ShardWorker", "run_batches_on_ray", "import_ray", "RAY_EXTRA"]

RAY_EXTRA = "pip install 'attnexplain[ray]'"
#: restarts of one worker before the run gives up (a worker that keeps dying is out of memory)
MAX_RESTARTS = 3
#: batches queued per worker (the next one waits on the worker while it returns a receipt)
IN_FLIGHT = 2
#: object store of a private Ray instance: only receipts and at most one model object pass through it
OBJECT_STORE_BYTES = 256 * 1024**2
#: niceness of the workers of a private Ray instance (a cluster started by `ray start` keeps its own)
WORKER_NICENESS = 0
#: seconds to wait for a TCP connection to ``--address`` before calling it unreachable
CONNECT_TIMEOUT = 3.0


def import_ray():
    """``import ray``, or an :class:`AnalyzeError` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise AnalyzeError(f"--engine ray needs Ray, an optional extra: {RAY_EXTRA} "
                           f"(or `bash scripts/setup.sh ray`)") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AnalyzeError(f"--address must be auto, HOST:PORT (the address `ray start --head` prints) or "
                           f"ray://HOST:PORT (Ray Client), got {address!r}")
    return host.strip("[]"), int(port)


#: an HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (Ray's head, Ray Client)
#: answers with its own SETTINGS frame at once
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _check_reachable(address: str) -> None:
    """Within :data:`CONNECT_TIMEOUT` s: a TCP connection to ``address`` and a gRPC (HTTP/2) answer
    from it, else a clear error. (``ray.init`` keeps retrying a dead or wrong address for a long time
    before it gives up; a firewall or proxy may accept the TCP connection and never answer.)"""
    host, port = _host_port(address)
    deadline = time.monotonic() + CONNECT_TIMEOUT
    reason = None
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as sock:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.sendall(_HTTP2_HELLO)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
            if len(head) < 9 or head[3] != 0x04:
                reason = "something listens there, but it does not answer like a Ray head node (gRPC)"
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
    if reason is None and not address.startswith("ray://"):
        reason = _gcs_problem(address, max(0.5, deadline - time.monotonic()))
    if reason is not None:
        raise AnalyzeError(
            f"cannot reach a Ray cluster at {address} ({reason}; waited at most {CONNECT_TIMEOUT:.0f} s). Start one "
            f"with `ray start --head` on the head machine (it prints the address to use), check host and port, or "
            f"leave out --address to start Ray on this machine")


def _gcs_problem(address: str, timeout: float) -> str | None:
    """None when a Ray GCS (head node) answers at ``address`` within ``timeout`` s, else why not.
    Uses Ray's own GCS client (a private API: if it moved, the check is skipped)."""
    try:
        from ray._raylet import InnerGcsClient

        InnerGcsClient.standalone(address, None, int(timeout * 1000))
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - another Ray version
        return None
    except Exception as exc:  # noqa: BLE001 - Ray raises RpcError / RaySystemError / ...
        return f"no Ray head node answers there: {str(exc).splitlines()[0][:200]}"
    return None


class RaySession:
    """The connection to Ray for one ``analyze`` call (a context manager).

    ``address=None`` starts a private Ray instance sized ``num_workers x worker_threads`` CPUs
    (default: every CPU of this machine) and stops it on exit; any other address joins a running
    cluster, which is left running. An already initialised Ray (``ray.init`` by the caller) is used
    as it is. ``info`` is the manifest's ``engine`` record, completed on connect. :meth:`start`
    connects in the background and creates the workers early (``analyze`` calls it before loading
    its own model); :meth:`connect` / entering the session waits for that.

    Raises :class:`AnalyzeError` (before anything starts) for ``num_workers < 1``,
    ``worker_threads < 1``, a malformed or unreachable address, Ray not installed; on connect,
    when the cluster has fewer CPUs than ``num_workers x worker_threads``.
    """

    def __init__(self, *, address: str | None = None, num_workers: int | None = None,
                 worker_threads: int | None = None, log: Callable[[str], None] | None = None):
        if num_workers is not None and int(num_workers) < 1:
            raise AnalyzeError(f"--num-workers must be >= 1, got {num_workers}")
        if worker_threads is not None and int(worker_threads) < 1:
            raise AnalyzeError(f"--worker-threads must be >= 1, got {worker_threads}")
        self.address = (address or "").strip() or None
        self.num_workers = int(num_workers) if num_workers is not None else None
        self.worker_threads = int(worker_threads) if worker_threads is not None else 1
        local_cpus = os.cpu_count() or 1
        if self.address is None and self.num_workers is not None and self.num_workers * self.worker_threads > local_cpus:
            # a private instance is this machine: more workers than its cores would each load the model
            # and then share the cores (the cluster check after connecting covers --address)
            raise AnalyzeError(f"this machine has {local_cpus} CPU(s); {self.num_workers} worker(s) x "
                               f"{self.worker_threads} thread(s) need {self.num_workers * self.worker_threads}. "
                               "Lower --num-workers or --worker-threads, or join a larger cluster with --address")
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.ray = import_ray()
        if self.address is not None and self.address != "auto":
            if self.address.startswith("ray://"):
                try:
                    import grpc  # noqa: F401  (Ray Client's transport)
                except ImportError:
                    raise AnalyzeError(f"--address ray://... (Ray Client) needs grpcio: {RAY_EXTRA}") from None
            _check_reachable(self.address)
        self.started = False
        self._watchdog = None
        self._thread = None
        self._error: BaseException | None = None
        self._connected = False
        self.workers: list[Any] = []
        self._workers_model: Any = None
        self.info: dict[str, Any] = {"name": "ray", "address": self.address or "local",
                                     "num_workers": self.num_workers, "worker_threads": self.worker_threads}

    def __enter__(self) -> "RaySession":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, model: Any = None, backend: str = "dense", backend_options: Mapping[str, Any] | None = None) -> None:
        """Connect in the background (a thread) and, when ``model`` is a name, start the workers and
        their model loading at once: Ray's start-up and the workers' imports and model load then run
        while the driver reads the data, loads its own copy of the model and opens the run folder.
        :meth:`connect` (or entering the session) waits for it and raises what it raised.

        The thread lives until :meth:`close`: Ray ties the processes it starts to the thread that
        started them (``PR_SET_PDEATHSIG``), so they would die with a thread that ended."""
        import threading

        if self._thread is not None or self._connected:
            return
        self._ready = threading.Event()
        self._release = threading.Event()

        def go() -> None:
            try:
                self._connect()
                if isinstance(model, str):
                    self._start_workers(model, backend, backend_options)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread by connect()
                self._error = exc
            finally:
                self._ready.set()
            self._release.wait()

        self._thread = threading.Thread(target=go, name="attnexplain-ray-start", daemon=True)
        self._thread.start()

    def _start_workers(self, model: str, backend: str, backend_options: Mapping[str, Any] | None) -> None:
        """Create the actor pool and send each worker its model to load (not waited for here)."""
        T = self.worker_threads
        remote = self.ray.remote(num_cpus=T, max_restarts=MAX_RESTARTS, max_task_retries=-1)(ShardWorker)
        self.workers = [remote.remote(T) for _ in range(self.num_workers)]
        for w in self.workers:
            w.preload.remote(model, backend, dict(backend_options or {}))
        self._workers_model = (model, backend, json.dumps(dict(backend_options or {}), sort_keys=True))

    def take_workers(self, model: Any, backend: str, backend_options: Mapping[str, Any] | None) -> list[Any]:
        """The workers :meth:`start` created for ``model`` (handed over once), or []."""
        key = (model, backend, json.dumps(dict(backend_options or {}), sort_keys=True))
        workers, self.workers = self.workers, []
        if workers and isinstance(model, str) and key == self._workers_model:
            return workers
        for w in workers:
            self.ray.kill(w, no_restart=True)
        return []

    def connect(self) -> None:
        if self._thread is not None:
            self._ready.wait()
            if self._error is not None:
                error, self._error = self._error, None
                self.close()
                raise error
        if not self._connected:
            try:
                self._connect()
            except BaseException:
                self.close()
                raise

    def _connect(self) -> None:
        ray = self.ray
        T = self.worker_threads
        if not ray.is_initialized():
            common = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
            if self.address is None:
                cpus = self.num_workers * T if self.num_workers else (os.cpu_count() or 1)
                self.log(f"[analyze] starting a private Ray instance ({cpus} CPUs) on this machine")
                # workers at normal priority (Ray's default niceness 15 lets any other process, even
                # Ray's own daemons, take their cores first; the local engine runs at 0 as well)
                with _lean_head():
                    ray.init(address="local", num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES,
                             _system_config={"worker_niceness": WORKER_NICENESS}, **common)
                self.started = True
                self._watchdog = _start_watchdog()
            else:
                try:
                    ray.init(address=self.address, **{k: v for k, v in common.items() if k != "include_dashboard"})
                except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
                    raise AnalyzeError(f"could not join the Ray cluster at {self.address}: {exc}. With HOST:PORT this "
                                       f"machine must be a node of the cluster (`ray start --address=HOST:PORT`); "
                                       f"from elsewhere use ray://HOST:10001 (Ray Client)") from None
                self.started = True  # close() disconnects this driver; the cluster keeps running
        self._connected = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if self.num_workers is None:
            self.num_workers = max(1, cpus // T)
        if self.num_workers * T > cpus:
            raise AnalyzeError(f"the Ray cluster has {cpus} CPU(s); {self.num_workers} worker(s) x {T} thread(s) need "
                               f"{self.num_workers * T}. Lower --num-workers or --worker-threads, or add nodes")
        self.info.update(num_workers=self.num_workers, worker_threads=T, cluster_cpus=cpus, nodes=len(nodes),
                         ray_version=getattr(ray, "__version__", "?"))

    def close(self) -> None:
        if self._thread is not None:  # a start still under way (the driver failed first): let it finish, then stop
            self._ready.wait()
            self._error = None
        for w in self.workers:
            try:
                self.ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 - the instance may be gone already
                pass
        self.workers = []
        self._connected = False
        if self.started:
            self.started = False
            self.ray.shutdown()
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if self._thread is not None:  # Ray's processes are gone: the thread that started them may end
            self._release.set()
            self._thread.join()
            self._thread = None


@contextlib.contextmanager
def _lean_head():
    """While a private Ray instance starts: leave out the head processes an ``analyze`` call never uses,
    each a Python process that imports Ray while the workers start (on a small machine they take the
    workers' cores): the autoscaler monitor (a private instance has a fixed size), the log monitor
    (``log_to_driver=False``: worker logs stay in Ray's session folder) and the dashboard / API server
    (``include_dashboard=False`` still starts it for usage statistics; jobs and the state API are not
    used). These are Ray-internal switches (the no-monitor and include-log-monitor switches of ``ray start``); with a
    Ray version that lacks them the instance starts as Ray's default does."""
    try:
        from ray._private import node as ray_node
        from ray._private import parameter as ray_parameter

        params_init = ray_parameter.RayParams.__init__
        start_api_server = ray_node.Node.start_api_server
    except (ImportError, AttributeError):  # pragma: no cover - another Ray version
        yield
        return

    def lean_params(self, *args: Any, **kwargs: Any) -> None:
        params_init(self, *args, **kwargs)
        self.no_monitor = True
        self.include_log_monitor = False

    def no_api_server(self, **kwargs: Any) -> None:
        return None

    ray_parameter.RayParams.__init__ = lean_params
    ray_node.Node.start_api_server = no_api_server
    try:
        yield
    finally:
        ray_parameter.RayParams.__init__ = params_init
        ray_node.Node.start_api_server = start_api_server


# A private Ray instance dies with its driver only in part: when the driver is killed (kill -9),
# gcs_server, the raylet and the workers go, but the raylet's agents (ray::DashboardAgent,
# ray::RuntimeEnvAgent) stay. The watchdog, a small child process, waits for the driver to go and
# then kills the processes the driver had started (checked by their start time, never a reused pid).
_WATCHDOG = """
import os, signal, sys, time
driver, procs = int(sys.argv[1]), [tuple(map(int, a.split(":"))) for a in sys.argv[2:]]
signal.signal(signal.SIGINT, signal.SIG_IGN)
while os.getppid() == driver:
    time.sleep(0.5)
for pid, start in procs:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if int(fh.read().rsplit(")", 1)[1].split()[19]) == start:
                os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
"""


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below ``root`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(d.name))
            start[int(d.name)] = int(fields[19])
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append((pid, start[pid]))
        todo += children.get(pid, [])
    return out


def _start_watchdog():
    import subprocess

    procs = _descendants(os.getpid())
    if not procs:
        return None
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), *[f"{p}:{t}" for p, t in procs]],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class ShardWorker:
    """One Ray actor: loads the model once, then analyses batches and writes their shards.

    ``threads`` torch threads (pinned first, before any model code runs). The model (an argument of
    :meth:`load` and of every call) is a model name/path (loaded with :func:`load_model_for_run` on the
    worker's node) or ``[ObjectRef]`` of a :class:`~attnexplain.models.LoadedModel` the driver put in
    the object store. ``job`` (an argument of every call, a few hundred bytes) says where and what:
    ``folder``, ``created`` (the manifest's stamp), ``methods``, ``setup`` (the keyword arguments of
    :func:`~attnexplain.runs.analyze.build_setup`, the resolved request), ``backend`` and
    ``backend_options``. Every call carries both, so a worker Ray restarts mid-run rebuilds its state
    from the retried call alone.
    """

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(int(threads))
        self.lm = None
        self.model_key: Any = None
        self.setup = None
        self.job_key: Any = None
        self.seconds_loading = 0.0

    def _receipt(self, **extra: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), **extra}

    def load(self, model: Any, backend: str = "dense", backend_options: Mapping[str, Any] | None = None) -> float:
        """Load the model (once: a second call with the same model is free); returns the seconds it took.
        The driver calls it as soon as the worker exists, while it prepares the run itself."""
        key = (model if isinstance(model, str) else "object", backend, json.dumps(backend_options or {}, sort_keys=True))
        if self.lm is not None and self.model_key == key:
            return 0.0
        t0 = time.perf_counter()
        if isinstance(model, str):
            self.lm = load_model_for_run(model, backend=backend, backend_options=dict(backend_options or {}))
        else:
            # a model object comes as [ObjectRef] with every call (not in the constructor: a restarted
            # worker gets it from the retried call) and is fetched once
            import ray

            self.lm = ray.get(model[0])
        self.model_key, self.setup, self.job_key = key, None, None
        self.seconds_loading += time.perf_counter() - t0
        return time.perf_counter() - t0

    def preload(self, model: str, backend: str, backend_options: Mapping[str, Any]) -> str | None:
        """:meth:`load`, called by the driver as soon as the worker exists (while it prepares the run
        itself); never raises (the error, if any, is raised again by :meth:`prepare`'s own load)."""
        try:
            self.load(model, backend, backend_options)
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"
        return None

    def _configure(self, job: Mapping[str, Any], model: Any) -> None:
        self.load(model, job["backend"], job["backend_options"])
        if self.setup is None or self.job_key != (job["folder"], job["created"]):
            kw = dict(job["setup"])
            self.setup = build_setup(self.lm, kw.pop("method_names"), **kw)
            self.job_key = (job["folder"], job["created"])

    def _check_folder(self, job: Mapping[str, Any]) -> None:
        folder = Path(job["folder"])
        host = socket.gethostname()
        shared = ("the run folder must be on a file system that every Ray node mounts at the same path "
                  "(one machine, NFS or another shared mount)")
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise AnalyzeError(f"a Ray worker on {host} cannot read the run folder {folder} "
                               f"({type(exc).__name__}: {exc}); {shared}") from None
        if manifest.get("created") != job["created"]:
            raise AnalyzeError(f"a Ray worker on {host} sees another run folder at {folder} (created "
                               f"{manifest.get('created')}, not {job['created']}); {shared}")
        probe = folder / "shards" / f".write-check-{host}-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise AnalyzeError(f"a Ray worker on {host} (pid {os.getpid()}) cannot write the run folder "
                               f"{folder / 'shards'} ({type(exc).__name__}: {exc}); the workers write the shards "
                               f"themselves, so {shared} and be writable by the user Ray runs as") from None

    def prepare(self, job: Mapping[str, Any], model: Any) -> dict[str, Any]:
        """Check the run folder, load the model (if :meth:`load` has not yet); the receipt says where this worker runs."""
        self._check_folder(job)
        self._configure(job, model)
        return self._receipt(seconds_loading=round(self.seconds_loading, 3))

    def run(self, job: Mapping[str, Any], model: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Analyse one batch and write its shard (atomically; a rerun of the batch rewrites the same files)."""
        import numpy as np

        self._configure(job, model)
        t0 = time.perf_counter()
        tables, arrays = run_batch(self.setup, int(job["setup"]["seed"]), inputs)
        RunWriter(Path(job["folder"]), {"methods": list(job["methods"])}).write_batch(
            int(inputs["positions"][0]), tables, arrays)
        return self._receipt(start=int(inputs["positions"][0]), ids=list(inputs["ids"]),
                             n_truncated=int(np.sum(tables["examples"]["truncated"])),
                             seconds=round(time.perf_counter() - t0, 3))


def _cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised (RayTaskError wraps it)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_batches_on_ray(writer: RunWriter, ds: Any, batches: list[list[int]], session: RaySession, *, model: Any,
                       worker_setup: Mapping[str, Any], store_set: set[int], bar: Any = None,
                       log: Callable[[str], None] | None = None,
                       on_batch: Callable[[int, int, int], None] | None = None) -> int:
    """Run ``batches`` (lists of dataset positions) on ``session``'s cluster; each worker writes its
    batches' shards into ``writer``'s (open) run folder. Returns the number of truncated texts.

    Raises :class:`AnalyzeError` when a worker cannot use the run folder or load the model, or dies
    more than :data:`MAX_RESTARTS` times; the shards written until then stay (run again to resume).
    """
    ray = session.ray
    log = log or session.log
    if not batches:
        return 0
    T = session.worker_threads
    setup = dict(worker_setup)
    backend = writer.manifest.get("backend", "dense")
    backend_options = writer.manifest.get("backend_options") or {}
    model_arg = model if isinstance(model, str) else [ray.put(model)]
    job = {"folder": str(Path(writer.path).resolve()), "created": writer.manifest["created"],
           "methods": list(writer.manifest["methods"]), "setup": setup, "backend": backend,
           "backend_options": dict(backend_options)}
    # the workers session.start() created while the driver prepared the run (their model is loading)
    actors = session.take_workers(model, backend, backend_options)
    if not actors:
        remote = ray.remote(num_cpus=T, max_restarts=MAX_RESTARTS, max_task_retries=-1)(ShardWorker)
        actors = [remote.remote(T) for _ in range(session.num_workers)]
    n = min(len(actors), len(batches))
    for a in actors[n:]:  # fewer batches than workers
        ray.kill(a, no_restart=True)
    actors = actors[:n]
    mapping = setup.get("label_mapping")
    try:
        t0 = time.perf_counter()
        try:
            ready = _get_all(ray, [a.prepare.remote(job, model_arg) for a in actors], log, "start and load the model")
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        hosts = sorted({r["host"] for r in ready})
        log(f"[analyze] ray: {n} worker(s) x {T} thread(s) on {len(hosts)} node(s) ready in "
            f"{time.perf_counter() - t0:.1f} s; {len(batches)} batch(es) to do")
        queue = deque(batches)
        pending: dict[Any, tuple[int, list[int]]] = {}

        def submit(i: int) -> None:
            batch = queue.popleft()
            pending[actors[i].run.remote(job, model_arg, batch_inputs(ds, batch, mapping, store_set))] = (i, batch)

        for _ in range(IN_FLIGHT):
            for i in range(n):
                if queue:
                    submit(i)
        n_trunc = 0
        number = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i, batch = pending.pop(done[0])
            try:
                receipt = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from None
            except ray.exceptions.RayActorError as exc:
                raise AnalyzeError(f"a Ray worker died more than {MAX_RESTARTS} times ({str(exc).splitlines()[0][:300]}); "
                                   f"out of memory? Try fewer --num-workers or a smaller --batch-size. The batches "
                                   f"written so far are kept: run the same command again to resume") from None
            writer.done_ids.update(receipt["ids"])
            writer.done_positions.update(batch)
            n_trunc += receipt["n_truncated"]
            if bar is not None:
                bar.update(len(batch))
            if on_batch is not None:
                on_batch(number, batch[0], len(batch))
            number += 1
            if queue:
                submit(i)
        return n_trunc
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def _get_all(ray: Any, refs: list[Any], log: Callable[[str], None], what: str, every: float = 60.0) -> list[Any]:
    """``ray.get(refs)``, saying every ``every`` seconds that the workers are still on their way
    (a cluster without free CPUs keeps actors pending)."""
    t0 = time.perf_counter()
    left = list(refs)
    while left:
        _, left = ray.wait(left, num_returns=len(left), timeout=every)
        if left:
            log(f"[analyze] ray: {len(left)} of {len(refs)} worker(s) still waiting to {what} after "
                f"{time.perf_counter() - t0:.0f} s (cluster busy?)")
    return ray.get(refs)
