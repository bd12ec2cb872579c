"""Where a job's batches run: in this process (``LocalEngine``, the default and the reference) or on a Ray
cluster (``RayEngine``), each engine handing back the results of ``ModelWorker`` calls as they finish.

On Ray, every actor holds one model: one actor per GPU where the cluster has GPUs, else one per CPU slot
asked (``workers`` and ``cpus_per_worker``). A batch whose actor dies (a machine lost, a process killed) is
retried on the restarted actor (Ray's ``max_restarts`` and ``max_task_retries``, ``retries`` each); once they
are spent, the job stops with ``JobInterrupted``, its outputs whole, and the next run resumes. Without an
address a local Ray cluster is started for the job and shut down after; with one, the address is checked
to answer before Ray is asked to join it, so a wrong one costs ``timeout`` seconds, not Ray's minute.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..runtime import UserInputError
from .work import FAULT_VARIABLE, ModelWorker

__all__ = ["ENGINES", "Engine", "EngineOptions", "JobInterrupted", "LocalEngine", "RayEngine", "open_engine"]

ENGINES = ("local", "ray")
IN_FLIGHT = 2  # batches queued per actor: one running, one waiting, so an actor never idles between two


class JobInterrupted(RuntimeError):
    """A job stopped before its end (a worker lost for good, or Ctrl-C): what it wrote is whole, and the
    same command resumes it."""


@dataclass(frozen=True)
class EngineOptions:
    """How a job runs: ``engine`` "local" or "ray"; for Ray, the cluster's ``address`` (None: a local cluster
    for this job; "auto": the one running on this machine), ``workers`` (None: one per GPU, else one per
    ``cpus_per_worker`` CPUs of the cluster), ``retries`` of a lost worker, and how long (``timeout``,
    seconds) an address may take to answer. ``device``: where each model runs (None: the default device;
    on Ray, the actor's GPU when it has one)."""

    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    retries: int = 2
    timeout: float = 5.0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UserInputError(f"unknown engine {self.engine!r}: choose {' or '.join(ENGINES)}")
        if self.workers is not None and self.workers < 1:
            raise UserInputError(f"--workers must be at least 1, not {self.workers}")
        if self.retries < 0:
            raise UserInputError(f"--retries must be 0 or more, not {self.retries}")


class Engine:
    """Runs ``ModelWorker`` calls on batches; ``run`` yields (batch index, result) as batches finish."""

    workers = 1

    def run(self, call: str, batches: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the engine holds (its actors, a cluster it started)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class LocalEngine(Engine):
    """Every batch in this process, in order, on one model."""

    def __init__(self, model: str, options: EngineOptions) -> None:
        self.worker = ModelWorker(model, options.device, os.environ.get(FAULT_VARIABLE))

    def run(self, call: str, batches: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        for index, arguments in enumerate(batches):
            yield index, getattr(self.worker, call)(*arguments)


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise UserInputError("--engine ray needs Ray: pip install 'protoscope[ray]' (or ray[data]>=2.60)") from error
    return ray


def connect(address: str | None, timeout: float) -> bool:
    """Join the Ray cluster at ``address`` (None: start a local one; "auto": the one on this machine) unless
    this process is connected already. True when a cluster was started here (to be shut down after)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False)
        return True
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit():
            raise UserInputError(f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379) nor 'auto'")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as error:
            raise UserInputError(f"the Ray cluster at {address} does not answer ({error.strerror or error}, waited "
                                 f"{timeout:g} s): check the address with `ray status` on its head node, or leave "
                                 "out --ray-address to run on a local cluster") from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as error:
        raise UserInputError(f"no Ray cluster at {address}: {error}. Start one (`ray start --head`) or leave out "
                             "--ray-address to run on a local cluster") from None
    return False


def disconnect() -> None:
    """Shut down the Ray cluster ``connect`` started for this job."""
    _ray().shutdown()


def ray_result(refs: Any) -> Any:
    """``ray.get`` of ``refs``, with a worker's own error raised as itself (a ``UserInputError``
    stays one, without Ray's remote traceback) and a lost worker as ``JobInterrupted``."""
    ray = _ray()
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
            ray.exceptions.ObjectLostError) as error:
        raise JobInterrupted(f"a Ray worker was lost and its retries are spent ({type(error).__name__}); "
                             "what was finished is kept: run the same command again to resume") from None


def actor_shape(options: EngineOptions) -> tuple[int, dict[str, float], str | None]:
    """How many actors, the resources each asks for, and the device their model goes to."""
    resources = _ray().cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and options.device in (None, "cuda"):
        return options.workers or gpus, {"num_gpus": 1.0, "num_cpus": options.cpus_per_worker}, "cuda"
    cpus = int(resources.get("CPU", 1) // options.cpus_per_worker)
    return options.workers or max(1, cpus), {"num_cpus": options.cpus_per_worker}, options.device or "cpu"


class RayEngine(Engine):
    """Batches on Ray actors, one model each; results as they finish (module docstring)."""

    def __init__(self, model: str, options: EngineOptions) -> None:
        ray = self.ray = _ray()
        self.started = connect(options.address, options.timeout)
        try:
            self.workers, resources, device = actor_shape(options)
            remote = ray.remote(max_restarts=options.retries, max_task_retries=options.retries,
                                **resources)(ModelWorker)
            fault = os.environ.get(FAULT_VARIABLE)
            self.actors = [remote.remote(model, device, fault) for _ in range(self.workers)]
            ray_result([actor.ready.remote() for actor in self.actors])
        except BaseException:
            self.close()
            raise

    def run(self, call: str, batches: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        queue = list(enumerate(batches))
        queue.reverse()
        pending: dict[Any, tuple[int, int]] = {}
        load = [0] * len(self.actors)
        while queue or pending:
            while queue and min(load) < IN_FLIGHT:
                slot = load.index(min(load))
                index, arguments = queue.pop()
                pending[getattr(self.actors[slot], call).remote(*arguments)] = (index, slot)
                load[slot] += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            index, slot = pending.pop(done[0])
            load[slot] -= 1
            yield index, ray_result(done[0])

    def close(self) -> None:
        ray = self.ray
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False


def open_engine(model: str, options: EngineOptions) -> Engine:
    """The engine ``options`` name, with its model(s) loaded."""
    return RayEngine(model, options) if options.engine == "ray" else LocalEngine(model, options)
