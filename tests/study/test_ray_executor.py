import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from taggnn.cli import main
from taggnn.errors import ConfigError, MissingExtraError, TaggnnError
from taggnn.study import Executor, WorkerDied, parse_spec, run_study

from .helpers import copy_study, metrics, spec_text

ray = pytest.importorskip("ray")

from taggnn.study.ray_executor import RayExecutor, WorkerLostError  # noqa: E402

pytestmark = pytest.mark.slow  # whole studies: make test runs them as its second step


@dataclass(frozen=True)
class Task:
    index: int
    marker: str = ""  # a file: absent on the first attempt, which then kills its worker process


def square(task: Task) -> int:
    if task.index == 3:
        raise ValueError(f"task {task.index} refuses")
    return task.index * task.index


def dies_once(task: Task) -> int:
    marker = Path(task.marker)
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-task, as one killed for memory would
    return task.index + 100


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module, started by an executor: it takes seconds."""
    # The workers unpickle these test functions: by value, since this module is not importable there.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert not ray.is_initialized()
    owner = RayExecutor(local_cpus=2)
    assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
    yield
    owner.close()
    assert not ray.is_initialized()  # the executor that started it stops it
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_map_gives_the_sequential_results_and_yields_exceptions(local_ray):
    executor = RayExecutor(num_cpus=1)
    assert isinstance(executor, Executor)
    tasks = [Task(i) for i in range(6)]
    results = dict(executor.map(square, tasks))
    executor.close()
    assert ray.is_initialized()  # an instance it did not start (the fixture's) is left running
    assert set(results) == set(tasks)
    error = results.pop(Task(3))
    assert type(error) is ValueError and str(error) == "task 3 refuses"  # yielded, not raised, as raised
    expected = {}
    for task in tasks:
        try:
            expected[task] = square(task)
        except ValueError:
            pass
    assert results == expected


def test_a_task_whose_worker_dies_is_retried(local_ray, tmp_path):
    executor = RayExecutor(max_retries=1)
    task = Task(7, marker=str(tmp_path / "attempted"))
    assert list(executor.map(dies_once, [task])) == [(task, 107)]
    assert (tmp_path / "attempted").exists()  # the first attempt did run, and died


def test_without_retries_a_lost_worker_is_yielded(local_ray, tmp_path):
    executor = RayExecutor(max_retries=0)
    task = Task(1, marker=str(tmp_path / "attempted"))
    [(yielded, error)] = list(executor.map(dies_once, [task]))
    assert yielded == task and type(error) is WorkerDied and isinstance(error, TaggnnError)
    assert WorkerLostError is WorkerDied  # one class for a lost worker, whichever executor ran the task
    assert "died on each of 1 attempt(s)" in str(error) and "Task(index=1" in str(error)


def test_each_run_gets_a_gpu_when_the_cluster_has_some(local_ray, monkeypatch):
    assert RayExecutor().num_gpus == 0  # this instance has no GPU
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 4.0})
    assert RayExecutor().num_gpus == 1 and RayExecutor(num_gpus=0.5).num_gpus == 0.5


def test_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="max_retries must be an integer >= 0; got -1"):
        RayExecutor(max_retries=-1)
    with pytest.raises(ConfigError, match="num_gpus must be a number >= 0"):
        RayExecutor(num_gpus=-0.5)


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"needs ray: pip install 'taggnn\[ray\]'"):
        RayExecutor()


def torch_threads(task: Task) -> int:
    import torch

    return torch.get_num_threads()


def test_each_task_runs_with_as_many_torch_threads_as_cpus_it_reserves(local_ray):
    with RayExecutor(num_cpus=2) as executor:
        assert [result for _, result in executor.map(torch_threads, [Task(0)])] == [2]
    with RayExecutor(num_cpus=0.5) as executor:  # at least one thread; set again in a reused worker process
        assert [result for _, result in executor.map(torch_threads, [Task(0), Task(1)])] == [1, 1]


def test_ray_and_local_workers_give_identical_metrics(local_ray, tiny_study, tmp_path):
    """The tiny study run as Ray tasks (1 CPU each) gives every run the metrics two local worker
    processes with one torch thread each gave, exactly."""
    out = copy_study(tiny_study[0], tmp_path / "study", runs=False)  # the cached features, no run
    with RayExecutor(num_cpus=1) as executor:
        records = run_study(parse_spec(spec_text()), out, executor=executor, progress=False)
    assert [r["status"] for r in records] == ["done"] * 4
    assert metrics(records) == metrics(tiny_study[1])


def test_study_run_with_the_ray_executor_from_the_command_line(local_ray, tiny_study, tmp_path, capsys):
    out = copy_study(tiny_study[0], tmp_path / "study")
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(seeds="3", rows="[B+TE]"))  # one new run: B+TE seed 2
    assert main(["study", "run", str(spec), "--out", str(out), "--executor", "ray", "--threads", "1",
                 "--no-progress"]) == 0
    assert "B+TE                  3    0    0    0" in capsys.readouterr().out
    assert ray.is_initialized()  # the fixture's instance: used, not stopped
    records = json.loads((out / "records.json").read_text())
    assert [(r["row"], r["seed"], r["status"]) for r in records] == [("B+TE", s, "done") for s in range(3)]
    assert (out / "runs" / "B+TE" / "seed-2" / "last.pt").is_file()
