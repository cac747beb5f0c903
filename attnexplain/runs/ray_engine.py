"""The Ray engine of ``attnexplain analyze --engine ray``: the same batches, shards and run folder
as the local engine, computed by a pool of Ray actors.

>>> analyze("runs/rt", model="minilm-rotten-tomatoes", dataset="rotten-tomatoes", engine="ray",
...         num_workers=4, worker_threads=2)               # a private Ray instance on this machine
>>> analyze(..., engine="ray", address="auto")             # the cluster `ray start` runs here

How a run goes (the actor-pool pattern of Ray's batch inference: the model is loaded once per
worker, not once per batch):

1. the driver (the ``analyze`` process) does everything the local engine does before the first
   batch: checks the request, loads the data set and the model (labels, maximum length, the
   faithfulness precision), opens the run folder (lock, manifest, resume scan);
2. it starts ``num_workers`` actors (:class:`ShardWorker`, ``worker_threads`` Ray CPUs and torch
   threads each); each loads the model (by name on its node, or the driver's model object through
   the object store) and checks that it sees the run folder (the manifest the driver just wrote,
   same ``created`` stamp) and can write into it;
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
    as it is. ``info`` is the manifest's ``engine`` record, completed on connect.

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
        self.info: dict[str, Any] = {"name": "ray", "address": self.address or "local",
                                     "num_workers": self.num_workers, "worker_threads": self.worker_threads}

    def __enter__(self) -> "RaySession":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        ray = self.ray
        T = self.worker_threads
        if not ray.is_initialized():
            common = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
            if self.address is None:
                cpus = self.num_workers * T if self.num_workers else (os.cpu_count() or 1)
                self.log(f"[analyze] starting a private Ray instance ({cpus} CPUs) on this machine")
                # workers at normal priority (Ray's default niceness 15 lets any other process, even
                # Ray's own daemons, take their cores first; the local engine runs at 0 as well)
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
        cpus = int(ray.cluster_resources().get("CPU", 0))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if self.num_workers is None:
            self.num_workers = max(1, cpus // T)
        if self.num_workers * T > cpus:
            self.close()
            raise AnalyzeError(f"the Ray cluster has {cpus} CPU(s); {self.num_workers} worker(s) x {T} thread(s) need "
                               f"{self.num_workers * T}. Lower --num-workers or --worker-threads, or add nodes")
        self.info.update(num_workers=self.num_workers, worker_threads=T, cluster_cpus=cpus, nodes=len(nodes),
                         ray_version=getattr(ray, "__version__", "?"))

    def close(self) -> None:
        if self.started:
            self.started = False
            self.ray.shutdown()
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None


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

    The model (an argument of every call) is a model name/path (loaded with
    :func:`load_model_for_run` on the worker's node) or ``[ObjectRef]`` of a
    :class:`~attnexplain.models.LoadedModel` the driver put in the object store. ``setup`` holds the keyword
    arguments of :func:`~attnexplain.runs.analyze.build_setup` (the resolved request).
    """

    def __init__(self, run_folder: str, created: str, methods: list[str], setup: Mapping[str, Any],
                 backend: str, backend_options: Mapping[str, Any], threads: int):
        import torch

        torch.set_num_threads(int(threads))
        self.folder = Path(run_folder)
        self.created = created
        self.methods = list(methods)
        self.setup_kw = dict(setup)
        self.backend, self.backend_options = backend, dict(backend_options)
        self.setup = None
        self.seconds_loading = 0.0

    def _receipt(self, **extra: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), **extra}

    def _load(self, model: Any) -> None:
        if self.setup is not None:
            return
        t0 = time.perf_counter()
        if isinstance(model, str):
            lm = load_model_for_run(model, backend=self.backend, backend_options=self.backend_options)
        else:
            # a model object comes as [ObjectRef] with every call (not in the constructor: a restarted
            # worker gets it from the retried call) and is fetched once
            import ray

            lm = ray.get(model[0])
        kw = dict(self.setup_kw)
        self.setup = build_setup(lm, kw.pop("method_names"), **kw)
        self.seconds_loading = time.perf_counter() - t0

    def _check_folder(self) -> None:
        host = socket.gethostname()
        shared = ("the run folder must be on a file system that every Ray node mounts at the same path "
                  "(one machine, NFS or another shared mount)")
        try:
            manifest = json.loads((self.folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise AnalyzeError(f"a Ray worker on {host} cannot read the run folder {self.folder} "
                               f"({type(exc).__name__}: {exc}); {shared}") from None
        if manifest.get("created") != self.created:
            raise AnalyzeError(f"a Ray worker on {host} sees another run folder at {self.folder} (created "
                               f"{manifest.get('created')}, not {self.created}); {shared}")
        probe = self.folder / "shards" / f".write-check-{host}-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise AnalyzeError(f"a Ray worker on {host} (pid {os.getpid()}) cannot write the run folder "
                               f"{self.folder / 'shards'} ({type(exc).__name__}: {exc}); the workers write the shards "
                               f"themselves, so {shared} and be writable by the user Ray runs as") from None

    def prepare(self, model: Any) -> dict[str, Any]:
        """Check the run folder, load the model; the receipt says where this worker runs."""
        self._check_folder()
        self._load(model)
        return self._receipt(seconds_loading=round(self.seconds_loading, 3))

    def run(self, model: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Analyse one batch and write its shard (atomically; a rerun of the batch rewrites the same files)."""
        import numpy as np

        self._load(model)
        t0 = time.perf_counter()
        tables, arrays = run_batch(self.setup, int(self.setup_kw["seed"]), inputs)
        RunWriter(self.folder, {"methods": self.methods}).write_batch(int(inputs["positions"][0]), tables, arrays)
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
    n = min(session.num_workers, len(batches))
    T = session.worker_threads
    setup = dict(worker_setup)
    backend = writer.manifest.get("backend", "dense")
    backend_options = writer.manifest.get("backend_options") or {}
    model_arg = model if isinstance(model, str) else [ray.put(model)]
    remote = ray.remote(num_cpus=T, max_restarts=MAX_RESTARTS, max_task_retries=-1)(ShardWorker)
    folder = str(Path(writer.path).resolve())
    actors = [remote.remote(folder, writer.manifest["created"], list(writer.manifest["methods"]), setup,
                            backend, backend_options, T) for _ in range(n)]
    mapping = setup.get("label_mapping")
    try:
        t0 = time.perf_counter()
        try:
            ready = _get_all(ray, [a.prepare.remote(model_arg) for a in actors], log, "start and load the model")
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        hosts = sorted({r["host"] for r in ready})
        log(f"[analyze] ray: {n} worker(s) x {T} thread(s) on {len(hosts)} node(s) ready in "
            f"{time.perf_counter() - t0:.1f} s; {len(batches)} batch(es) to do")
        queue = deque(batches)
        pending: dict[Any, tuple[int, list[int]]] = {}

        def submit(i: int) -> None:
            batch = queue.popleft()
            pending[actors[i].run.remote(model_arg, batch_inputs(ds, batch, mapping, store_set))] = (i, batch)

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
