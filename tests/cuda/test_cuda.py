"""Tests that need a CUDA GPU (``pytest -m cuda``; ``make bench-cuda`` runs them). They skip here."""
import os

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("backend", ["csr", "structured", "edge_index"])
def test_backends_equal_pyg_appnp_on_cuda(backend):
    from torch_geometric.nn import APPNP

    from taggnn.graph import SpatioTemporalGraph
    from taggnn.nn import GraphRefiner

    graph = SpatioTemporalGraph(8, 7, 7)
    x = torch.randn(4, graph.num_nodes, 64, device="cuda", requires_grad=True)
    out = GraphRefiner(graph, backend=backend).cuda()(x)
    edge_index, _ = graph.batched_edges(4, "cuda")
    ref = APPNP(2, 0.1)(x.reshape(-1, 64), edge_index).view_as(out)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad, = torch.autograd.grad(out.sum(), x)
    ref_grad, = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_mixed_precision_training_step(tmp_path, amp):
    from taggnn.engine import load_config, train

    config = load_config("synthgym_tiny", [
        "data.synth_train=32", "data.synth_val=16", "data.synth_test=16", "train.epochs=1", "train.batch_size=8",
        f"train.amp={amp}", "train.device=cuda"])
    summary = train(config, tmp_path, progress=False)
    assert summary["steps"] == 4 and "test" in summary


def test_nccl_group_of_one_runs_every_trainer_collective():
    import torch.distributed as dist

    from taggnn.engine.distributed import all_reduce_sum, broadcast_flag, init_distributed

    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29533"})
    dist.init_process_group(backend="cpu:gloo,cuda:nccl", world_size=1, rank=0)  # as init_distributed does
    try:
        context = init_distributed("cuda")
        context.world_size = 2  # force the collective code paths with a group of one
        assert torch.equal(all_reduce_sum(torch.ones(3, dtype=torch.long), context), torch.ones(3, dtype=torch.long))
        assert torch.equal(all_reduce_sum(torch.ones(3, device="cuda"), context), torch.ones(3, device="cuda"))
        assert broadcast_flag(True, context)
        gathered = [None]
        dist.all_gather_object(gathered, {"rng": torch.get_rng_state()})
        state = [{"w": torch.ones(2)}]
        dist.broadcast_object_list(state, src=0)
        assert torch.equal(state[0]["w"], torch.ones(2))
    finally:
        dist.destroy_process_group()


def test_a_study_runs_one_worker_per_gpu_and_resumes(tmp_path):
    """``taggnn study run`` with the default executor on a CUDA machine: one worker per GPU, every
    run on the GPU, the report written, and a second run of the same command trains nothing."""
    import json
    import subprocess
    import sys

    import yaml

    from tests.study.helpers import ROOT, SMALL, spec_text

    cuda_small = [item.replace("train.device=cpu", "train.device=cuda") for item in SMALL]
    spec = tmp_path / "study.yaml"
    spec.write_text(spec_text().replace(", ".join(SMALL), ", ".join(cuda_small)))
    command = [sys.executable, "-m", "taggnn", "study", "run", str(spec), "--out", str(tmp_path / "study"),
               "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    records = json.loads((tmp_path / "study" / "records.json").read_text())
    assert len(records) == 4 and all(record["metrics"] for record in records)
    folders = list((tmp_path / "study" / "runs").glob("*/seed-*"))
    assert len(folders) == 4
    for folder in folders:
        assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["device"] == "cuda"
    assert (tmp_path / "study" / "report.md").is_file()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads((tmp_path / "study" / "records.json").read_text())
    assert [(r["row"], r["seed"], r["metrics"], r["wall_s"]) for r in again] == [
        (r["row"], r["seed"], r["metrics"], r["wall_s"]) for r in records]  # nothing trained again
