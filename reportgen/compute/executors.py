"""Where the per-image computation runs (`runtime.executor`).

Both executors take the loaded batches in the spec's order and hand back each batch
with its outputs in that same order, whatever finishes first, so the report does not
depend on where it was computed:

- `local`: this process. A background thread loads and computes the next batch while
  the caller writes the pages and maps of the previous one, so a build takes about
  max(compute time, render time) instead of their sum. The queue between them holds
  one batch: memory stays bounded whatever the number of images.
- `ray`: the batches are sharded over Ray workers (actors), each building the model
  once from the weights sent by this process, one GPU per worker when the device is
  CUDA. Only plain data crosses process boundaries: the spec, the weights as NumPy
  arrays, the loaded samples and the computed outputs. This process renders.

Every batch is computed whole by one `Pipeline`, exactly as in a single-process
build, so the maps and metrics are the same.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from reportgen.compute.models import build_model
from reportgen.compute.pipeline import (
    ImageOutput,
    Pipeline,
    Stopwatch,
    plan_layers,
    seed_everything,
)
from reportgen.errors import UserError

if TYPE_CHECKING:
    from reportgen.compute.data import Sample
    from reportgen.spec import Spec

log = logging.getLogger(__name__)

Batch = list["Sample"]
Computed = tuple[Batch, list[ImageOutput]]

QUEUE_DEPTH = 1  # computed batches waiting for the caller (local executor)
IN_FLIGHT_PER_WORKER = 2  # batches submitted ahead to each Ray worker
CPU_WORKERS = 2  # Ray workers when there is no GPU and `runtime.workers` is not set


def computed_ahead(batches: Iterable[Batch], compute: Callable[[Batch], list[ImageOutput]],
                   depth: int = QUEUE_DEPTH) -> Iterator[Computed]:
    """`(batch, compute(batch))` in order, computed in a background thread ahead of the caller.

    At most `depth` computed batches wait in the queue. An exception in the thread is
    raised here; when the caller stops early, the thread ends after its current batch.
    """
    done = object()
    results: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if stop.is_set() or not put((batch, compute(batch))):
                    return
            put(done)
        except BaseException as exc:  # handed to the caller, who raises it
            put(exc)

    thread = threading.Thread(target=work, name="reportgen-compute", daemon=True)
    thread.start()
    try:
        while True:
            item = results.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def plain_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's state_dict as NumPy arrays on the host (bfloat16 widened to float32,
    which loads back exactly)."""
    weights = {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        weights[name] = value.numpy()
    return weights


class PipelineWorker:
    """A Ray actor's state: the model built once from plain weights, and its `Pipeline`."""

    def __init__(self, spec: Spec, weights: dict[str, np.ndarray], device_type: str,
                 images_to_compute: int, threads: int) -> None:
        torch.set_num_threads(threads)
        device = torch.device(device_type)  # Ray makes the worker's GPU the only visible one
        seed_everything(spec.runtime.seed, device)
        m = spec.model
        model = build_model(m.architecture, m.encoder, m.classes, m.in_channels, m.options)
        model.load_state_dict({name: torch.from_numpy(np.array(value))
                               for name, value in weights.items()})
        resolved, infos, plan = plan_layers(spec, model, images_to_compute)
        self.pipeline = Pipeline(spec, model.to(device).eval(), resolved, plan, infos, device,
                                 images_to_compute)

    def process(self, batch: Batch) -> tuple[list[ImageOutput], dict[str, float]]:
        """The batch's outputs and the seconds per stage spent on it."""
        clock = Stopwatch()
        return self.pipeline.process(batch, clock), clock.totals


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("runtime.executor is ray but Ray is not installed: "
                        "pip install 'reportgen[ray]'") from None
    return ray


@contextmanager
def _ray_session(ray: Any, spec: Spec) -> Iterator[None]:
    """Join `runtime.ray_address`, or start a local Ray instance for this build only."""
    if ray.is_initialized():
        yield
        return
    address = spec.runtime.ray_address
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting home
        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(),
                 include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def computed_on_ray(batches: Iterable[Batch], pipeline: Pipeline,
                    clock: Stopwatch) -> Iterator[Computed]:
    """`(batch, outputs)` in order, the batches sharded round-robin over Ray workers.

    At most `IN_FLIGHT_PER_WORKER` batches per worker are loaded and waiting, so memory
    stays bounded. The workers' seconds per stage are added to `clock`.
    """
    ray = _import_ray()
    spec = pipeline.spec
    gpu = pipeline.device.type == "cuda"
    with _ray_session(ray, spec):
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpu and not gpus:
            raise UserError("the device is CUDA but the Ray cluster has no GPU")
        count = spec.runtime.workers or (gpus if gpu else CPU_WORKERS)
        share = max(1, cpus // count)  # what each worker reserves of the cluster
        threads = spec.runtime.threads or share  # what its arithmetic runs on
        actor = ray.remote(PipelineWorker).options(num_gpus=1 if gpu else 0,
                                                   num_cpus=1 if gpu else share)
        weights = ray.put(plain_weights(pipeline.model))
        workers = [actor.remote(spec, weights, "cuda" if gpu else "cpu",
                                pipeline.images_to_compute, threads) for _ in range(count)]
        log.info("computing on %d Ray worker(s)%s", count, " (one GPU each)" if gpu else "")
        pending: deque[tuple[Batch, Any]] = deque()
        try:
            for index, batch in enumerate(batches):
                pending.append((batch, workers[index % count].process.remote(batch)))
                if len(pending) >= IN_FLIGHT_PER_WORKER * count:
                    yield _gathered(ray, pending.popleft(), clock)
            while pending:
                yield _gathered(ray, pending.popleft(), clock)
        finally:
            for worker in workers:
                ray.kill(worker)


def _gathered(ray: Any, submitted: tuple[Batch, Any], clock: Stopwatch) -> Computed:
    batch, future = submitted
    outputs, seconds = ray.get(future)
    for stage, value in seconds.items():
        clock.add(stage, value)
    return batch, outputs


def computed_batches(batches: Iterable[Batch], pipeline: Pipeline,
                     clock: Stopwatch) -> Iterator[Computed]:
    """The batches with their outputs, in order, on the spec's `runtime.executor`."""
    if pipeline.spec.runtime.executor == "ray":
        return computed_on_ray(batches, pipeline, clock)
    return computed_ahead(batches, lambda batch: pipeline.process(batch, clock))
