"""The one store of fitted things (explainers/store.py), with a stand-in recipe: single flight, the
bound on memory (least recently used out first, by bytes), the disk tiers, failures, the compute
thread, and the per-request training data."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from explainers.fitted import store
from explainers.fitted.store import Key, Store, training_set
from explainers.runtime import compute
from explainers.runtime.errors import DatasetError


class Thing:
    """A fitted stand-in: a value and a size."""

    def __init__(self, value: str, size: int) -> None:
        self.value, self.size, self.frozen = value, size, False


class Recipe:
    """A recipe for ``Thing`` s whose fits are counted, optionally slow, failing or stored on disk."""

    def __init__(self, name: str, size: int = 10, steps: int = 0, step_seconds: float = 0.0,
                 fail: str | None = None, on_disk: bool = False, kind: str = "things") -> None:
        self.key = Key.of(kind, "model", "data", name=name)
        self.title = f"Fitting {name}"
        self.filename = f"{name}.txt" if on_disk else None
        self.name, self.size, self.steps, self.step_seconds, self.fail = name, size, steps, step_seconds, fail
        self.fits: list[int] = []

    def fit(self, progress):
        self.fits.append(threading.get_ident())
        for step in range(1, self.steps + 1):
            time.sleep(self.step_seconds)
            if progress is not None:
                progress(step / (self.steps + 1), f"step {step} of {self.steps}")
        if self.fail:
            raise ValueError(self.fail)
        return Thing(self.name, self.size)

    def load(self, path: Path) -> Thing:
        name, size = path.read_text().split()
        return Thing(name, int(size))

    def save(self, value: Thing, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value.value} {value.size}")

    def share(self, value: Thing) -> Thing:
        value.frozen = True
        return value

    def nbytes(self, value: Thing) -> int:
        return value.size


@pytest.fixture(autouse=True)
def private_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(store, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(store, "WAIT_POLL", 0.01)
    return tmp_path


def test_one_fit_for_many_callers_each_told_in_its_own_thread():
    """Eight threads ask at once: one fit, one shared frozen object; every caller's listener is called
    only from its own thread, with the recipe's title; those who joined are told so."""
    recipe = Recipe("b4", steps=5, step_seconds=0.1)
    shop = Store()
    results, seen, errors = {}, {}, []

    def session(i):
        me = threading.get_ident()
        seen[i] = []
        try:
            results[i] = shop.get(recipe, lambda f, m: seen[i].append((threading.get_ident() == me, f, m)))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(10)
    assert not errors and len(recipe.fits) == 1
    assert len({id(r) for r in results.values()}) == 1 and results[0].frozen
    assert recipe.fits[0] not in {t.ident for t in threads}, "the fit runs in a worker, not in a caller's thread"
    for reports in seen.values():
        assert reports and all(own for own, _, _ in reports)
        assert all(m.startswith("Fitting b4: ") for _, _, m in reports)
        assert any("step" in m for _, _, m in reports) and reports[-1][1:] == (1.0, "Fitting b4: done")
    assert sum(any("another session" in m for _, _, m in reports) for reports in seen.values()) == 7
    assert shop.get(recipe) is results[0] and len(recipe.fits) == 1  # kept: no second fit
    assert shop.under_way() == 0


def test_the_default_listener_is_the_callers_reporting_one():
    from explainers.runtime.progress import reporting

    told = []
    with reporting(lambda f, m: told.append(m)):
        Store().get(Recipe("x", steps=3, step_seconds=0.05))
    assert told and all(m.startswith("Fitting x: ") for m in told)


def test_memory_is_bounded_by_bytes_least_recently_used_out_first():
    shop = Store(max_bytes=100)
    a, b, c, d = (Recipe(name, size=40) for name in "abcd")
    first_a = shop.get(a)
    shop.get(b)
    assert shop.nbytes == 80 and len(shop) == 2
    assert shop.get(a) is first_a  # a hit: a is now the most recently used
    shop.get(c)  # 120 bytes: b (least recently used) goes
    assert a.key in shop and b.key not in shop and c.key in shop and shop.nbytes == 80
    shop.get(b)  # fitted again (nothing on disk for this kind): a goes now
    assert len(b.fits) == 2 and a.key not in shop and shop.nbytes == 80
    assert shop.keys() == [c.key, b.key]
    huge = Recipe("huge", size=1_000)
    assert shop.get(huge).size == 1_000  # larger than the bound: returned, and kept alone until the next one
    assert shop.keys() == [huge.key] and shop.nbytes == 1_000
    shop.get(d)
    assert shop.keys() == [d.key] and shop.nbytes == 40
    assert first_a.value == "a"  # what a caller holds stays valid after eviction


def test_the_bound_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_STORE_MB", "3")
    assert Store().max_bytes == 3 * 2 ** 20
    monkeypatch.delenv("PROTOSCOPE_STORE_MB")
    assert Store().max_bytes == store.DEFAULT_MEGABYTES * 2 ** 20


def test_disk_tiers_this_machine_then_shipped_and_an_unreadable_file_is_refitted(private_disk):
    recipe = Recipe("b234", on_disk=True)
    reports = []
    Store().get(recipe, lambda f, m: reports.append(m))
    written = private_disk / "cache" / "things" / "b234.txt"
    assert written.read_text() == "b234 10" and len(recipe.fits) == 1

    again = Store().get(recipe, lambda f, m: reports.append(m))  # a new process: memory is empty
    assert again.value == "b234" and again.frozen and len(recipe.fits) == 1

    written.unlink()
    shipped = private_disk / "assets" / "things" / "b234.txt"
    shipped.parent.mkdir(parents=True)
    shipped.write_text("b234 7")
    reports.clear()
    assert store.made(recipe, lambda f, m: reports.append(m)).size == 7
    assert reports == ["loaded (shipped with Protoscope)"] and not written.exists()  # read, never copied

    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text("not a thing")  # this machine's tier comes first; unreadable: deleted, next tier read
    reports.clear()
    assert store.made(recipe, lambda f, m: reports.append(m)).size == 7
    assert reports == ["loaded (shipped with Protoscope)"] and not written.exists() and shipped.exists()

    shipped.write_text("broken")  # a broken shipped file is left alone and the thing fitted
    assert store.made(recipe).size == 10 and shipped.read_text() == "broken" and written.exists()
    assert store.made(recipe, cache=False) is not None and len(recipe.fits) == 3  # cache=False: always a fit


def test_a_failure_reaches_every_waiter_and_is_not_remembered():
    recipe = Recipe("bad", steps=3, step_seconds=0.1, fail="Class '2' has 3 training images")
    shop = Store()
    raised = []

    def session():
        try:
            shop.get(recipe)
        except ValueError as error:
            raised.append(str(error))

    threads = [threading.Thread(target=session) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert raised == ["Class '2' has 3 training images"] * 3 and len(recipe.fits) == 1
    with pytest.raises(ValueError):
        shop.get(recipe)
    assert len(recipe.fits) == 2 and shop.under_way() == 0 and len(shop) == 0


def test_asked_from_the_compute_thread_the_fit_runs_there_instead_of_deadlocking():
    """A fit submits its passes to the compute thread; asked from a job of that thread, a worker's
    passes would queue behind the job waiting for them. The store fits inline there instead."""
    class Passes(Recipe):
        def fit(self, progress):
            compute.run(time.sleep, 0.01)  # a pass, as a fit's traces are
            return super().fit(progress)

    recipe = Passes("inline", steps=2)
    told = []
    done = []
    worker = threading.Thread(target=lambda: done.append(compute.run(Store().get, recipe, lambda f, m: told.append(m))))
    worker.start()
    worker.join(10)
    assert done and done[0].value == "inline", "deadlocked"
    assert any("step 2 of 2" in m for m in told)


def test_training_set_prefers_what_is_given_then_the_model():
    own = SimpleNamespace(name="digits", dataset="digits")
    assert training_set(own).name == "digits"
    assert training_set(SimpleNamespace(name="mine", dataset=None), "digits").split == "train"
    nameless = SimpleNamespace(name="mine.pt", dataset=None)
    with pytest.raises(DatasetError, match="mine.pt comes without them: name a folder of them"):
        training_set(nameless, purpose="The B4 prototype explainer")
    given = training_set(own)
    assert training_set(nameless, given) is given  # a loaded dataset is used as it is
