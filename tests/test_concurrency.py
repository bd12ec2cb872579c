"""A classroom on one server: many sessions share one loaded model, each gets its own right map.

Streamlit runs every session's script in a thread of its own and shares what
``st.cache_resource`` returns (the model) between them. These tests do the same with plain
threads on one ``ModelSpec``: every map must equal, bit for bit, the one computed alone.
"""
from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import torch
from helpers import digits_model, hook_counts

from explainers import explain_many, load_dataset, trace
from explainers.runtime import compute
from explainers.runtime.hooks import _TAPS

# Gradient (shared backward), gradient-free, perturbation (own batched passes, an fx-traced
# copy made on first use), propagation (own forward and backward on a private copy).
METHODS = ("gradcam", "eigencam", "scorecam", "ablationcam", "lrp_epsilon")
BLOCKS = ("B2", "B3", "B4")


def views(count: int) -> list[tuple[int, str, int | None]]:
    """(image index, block, target) triples: different images, depths and classes."""
    return [(i % 12, BLOCKS[i % 3], None if i % 4 else (i * 7) % 10) for i in range(count)]


def maps_of(model, images, view) -> dict[str, tuple[int, np.ndarray]]:
    index, block, target = view
    result = explain_many(model, images[index], list(METHODS), block=block, target=target)
    return {name: (e.target, e.raw) for name, e in result.items()}


def test_four_threads_sharing_one_model_get_exactly_the_maps_computed_alone():
    model = digits_model()  # fresh: its inference copy is first traced (torch.fx) while other threads run
    dataset = load_dataset("digits", "test")
    images = [dataset[i][0] for i in range(12)]
    hooks_before = hook_counts(model.net)
    plan = views(120)
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda view: maps_of(model, images, view), plan))
    alone = {view: maps_of(model, images, view) for view in set(plan)}
    wrong = [(view, name) for view, found in zip(plan, concurrent) for name in METHODS
             if found[name][0] != alone[view][name][0] or not np.array_equal(found[name][1], alone[view][name][1])]
    assert not wrong, f"{len(wrong)} of {len(plan) * len(METHODS)} maps differ from the single-threaded ones: {wrong[:5]}"
    assert hook_counts(model.net) == hooks_before, "a request left a hook on the shared model"
    assert _TAPS.get() is None, "a request's taps leaked into the caller's context"


def test_a_tap_is_seen_only_by_the_thread_that_set_it():
    """Two threads trace the same model at the same moment, each recording one block: each gets
    exactly its own activations (a plain hook on the shared module would record both)."""
    model = digits_model()
    dataset = load_dataset("digits", "test")
    inputs = [model.transform(dataset[i][0]).unsqueeze(0) for i in (0, 1)]
    expected = [trace(model, x, blocks=["B3"]).activations["B3"] for x in inputs]
    barrier = threading.Barrier(2)

    def traced(x: torch.Tensor) -> list[torch.Tensor]:
        barrier.wait()
        return [trace(model, x, blocks=["B3"]).activations["B3"] for _ in range(25)]

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = list(pool.map(traced, inputs))
    for mine, reference in zip(found, expected):
        assert all(torch.equal(activation, reference) for activation in mine)


def test_a_long_job_yields_to_a_short_one_between_its_batches():
    """Score-CAM submits one job per batch, so a Grad-CAM started meanwhile runs before it ends."""
    model = digits_model()
    image = load_dataset("digits", "test")[0][0]
    explain_many(model, image, ["scorecam", "gradcam"], block="B4")  # warm: inference copy made
    order: list[str] = []
    started = threading.Event()
    real = {"run": compute.run, "run_batch": compute.run_batch}

    def watched(kind: str):
        def submit(function, *args, **kwargs):
            name = getattr(function, "__name__", "")

            def job():  # runs on the compute thread: ``order`` is the order in which jobs really ran
                if name == "_masked_batch":
                    started.set()
                    order.append("score-cam batch")
                elif name == "_trace_job" and started.is_set():
                    order.append("grad-cam trace")
                return function(*args, **kwargs)

            return real[kind](job)

        return submit

    for kind in real:  # every module calls ``compute.run`` through the module, so this reaches all
        setattr(compute, kind, watched(kind))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            long = pool.submit(explain_many, model, image, ["scorecam"], "B4", None)
            started.wait(timeout=30)
            short = pool.submit(explain_many, model, image, ["gradcam"], "B4", None)
            short.result(timeout=60)
            long.result(timeout=120)
    finally:
        for kind, function in real.items():
            setattr(compute, kind, function)
    assert "grad-cam trace" in order
    assert order.index("grad-cam trace") < len(order) - 1, "the Grad-CAM waited for the whole Score-CAM"


def test_an_exception_in_a_job_reaches_its_caller_and_the_compute_thread_goes_on():
    def explode() -> None:
        raise ZeroDivisionError("inside the job")

    with pytest.raises(ZeroDivisionError, match="inside the job"):
        compute.run(explode)
    assert compute.run(lambda: compute.on_compute_thread()) is True, "the next job still runs, on the compute thread"
    assert compute.run(lambda: compute.run(lambda: 41) + 1) == 42, "a job that submits a job runs it inline"


def resident_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_memory_stays_flat_over_repeated_concurrent_rounds():
    """Rounds of four concurrent sessions, each a new thread as Streamlit makes them, each explaining
    a different image: after warm-up, resident memory stays within 10%."""
    model = digits_model()
    dataset = load_dataset("digits", "test")
    images = [dataset[i][0] for i in range(40)]

    def round_(number: int) -> None:
        threads = [threading.Thread(target=explain_many, args=(
            model, images[(number * 4 + k) % len(images)], ["gradcam", "eigencam", "scorecam", "lrp_epsilon"]),
            kwargs={"block": BLOCKS[k % 3]}) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for number in range(10):
        round_(number)
    gc.collect()
    warm = resident_mb()
    for number in range(10, 70):
        round_(number)
    gc.collect()
    after = resident_mb()
    print(f"\nresident memory after warm-up {warm:.0f} MB, after 60 more rounds of 4 sessions {after:.0f} MB")
    assert after <= warm * 1.10, f"memory grew from {warm:.0f} MB to {after:.0f} MB over 60 rounds"


def test_single_pass_jobs_go_before_queued_batches():
    """While the compute thread is busy, a batch job queued first still runs after a single pass queued later."""
    release, busy = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        busy.set()
        release.wait(timeout=30)

    with ThreadPoolExecutor(max_workers=3) as pool:
        holding = pool.submit(compute.run, hold)
        busy.wait(timeout=30)
        batch = pool.submit(compute.run_batch, ran.append, "batch")
        time.sleep(0.05)  # the batch is queued first
        single = pool.submit(compute.run, ran.append, "single pass")
        time.sleep(0.05)
        release.set()
        for future in (holding, batch, single):
            future.result(timeout=30)
    assert ran == ["single pass", "batch"]
