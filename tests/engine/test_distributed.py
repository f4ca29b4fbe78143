"""Two processes with the gloo backend on CPU give the same metrics as one."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from taggnn.data import SynthGym, eval_transform
from taggnn.engine import evaluate, load_config, train
from taggnn.engine.distributed import DistributedContext, ResumableSampler, init_distributed
from taggnn.models import build_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model():
    torch.manual_seed(0)
    return build_model("r2plus1d_tiny", 16, num_frames=8, crop_size=32, num_heads=4, ffn_dim=32).eval()


def small_dataset():
    # 21 clips: not a multiple of the world size, so a padding sampler would count one twice
    return SynthGym("val", length=21, num_frames=8, size=32, transform=eval_transform(32, short_side=32))


def _worker(rank, world_size, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    context = init_distributed("cpu")
    meter = evaluate(small_model(), small_dataset(), batch_size=4, device=torch.device("cpu"), num_classes=16,
                     context=context, progress=False)
    if rank == 0:
        torch.save({"confusion": meter.confusion, "hits": meter.topk_hits}, os.path.join(out_dir, "eval.pt"))
    config = load_config("synthgym_tiny", [
        "data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32",
        "data.synth_train=24", "data.synth_val=11", "data.synth_test=13", "train.batch_size=4",
        "model.ffn_dim=32", "train.epochs=1"])
    train(config, os.path.join(out_dir, "run"), progress=False)
    dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    gathered = torch.load(tmp_path / "eval.pt")
    single = evaluate(small_model(), small_dataset(), batch_size=4, device=torch.device("cpu"), num_classes=16,
                      context=DistributedContext(), progress=False)
    assert int(gathered["confusion"].sum()) == 21  # every clip once
    assert torch.equal(gathered["confusion"], single.confusion)
    assert torch.equal(gathered["hits"], single.topk_hits)
    metrics = json.loads((tmp_path / "run" / "metrics_test.json").read_text())
    assert metrics["count"] == 13  # gathered across ranks without double counting
    assert (tmp_path / "run" / "last.pt").exists()


def test_sampler_shards_and_resumes():
    shards = [ResumableSampler(10, seed=1, rank=r, world_size=3).indices() for r in range(3)]
    assert sorted(sum(shards, [])[:10]) != [] and all(len(s) == 4 for s in shards)
    assert set(sum(shards, [])) == set(range(10))
    sampler = ResumableSampler(10, seed=1)
    sampler.set_epoch(2, start=3)
    full = ResumableSampler(10, seed=1)
    full.set_epoch(2)
    assert list(sampler) == list(full)[3:] and len(sampler) == 7
    unpadded = [ResumableSampler(10, shuffle=False, rank=r, world_size=3, pad=False).indices() for r in range(3)]
    assert sorted(sum(unpadded, [])) == list(range(10))


def test_balanced_sampler_is_seeded_resumable_and_sharded():
    from taggnn.engine.distributed import class_weights, sample_weights

    targets = [0] * 90 + [1] * 10
    weights = sample_weights(targets, "balanced")
    sampler = ResumableSampler(100, seed=3, weights=weights)
    sampler.set_epoch(2)
    drawn = torch.tensor(sampler.indices())
    share = float((drawn >= 90).float().mean())
    assert 0.3 < share < 0.7  # the 10% class is drawn about half the time
    resumed = ResumableSampler(100, seed=3, weights=weights)
    resumed.set_epoch(2, start=40)
    assert list(resumed) == drawn.tolist()[40:]
    ranks = [ResumableSampler(100, seed=3, weights=weights, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    assert sorted(ranks[0].indices() + ranks[1].indices()) == sorted(drawn.tolist())
    sqrt = sample_weights(targets, "sqrt")
    assert float(sqrt[95] / sqrt[0]) == pytest.approx(3.0)
    assert sample_weights(targets, "random") is None
    inverse = class_weights(targets, 3, "inverse")
    assert inverse[2] == 0 and float(inverse[1] / inverse[0]) == pytest.approx(9.0) and float(inverse[:2].mean()) == 1
    effective = class_weights(targets, 2, "effective_number")
    assert 1 < float(effective[1] / effective[0]) < 9


def test_training_with_a_balanced_sampler_and_class_weights(tmp_path):
    from ..helpers import small_config

    summary = train(small_config("data.synth_long_tail=10", "data.sampler=sqrt", "optim.class_weights=inverse",
                                 "train.epochs=1"), tmp_path, progress=False)
    assert summary["steps"] == 6 and "test" in summary


def _collectives_worker(rank, world_size, port, out):
    import torch.distributed as dist

    from taggnn.engine.distributed import all_reduce_sum, broadcast_flag

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    # the way the CUDA path creates its group, minus NCCL: CPU tensors go to the gloo part
    dist.init_process_group(backend="cpu:gloo", rank=rank, world_size=world_size)
    try:
        context = DistributedContext(rank=rank, world_size=world_size)
        summed = all_reduce_sum(torch.full((2, 2), rank + 1, dtype=torch.long), context)  # confusion matrices
        flag = broadcast_flag(rank == 1, context)  # the stop / non-finite flag
        gathered = [None] * world_size
        dist.all_gather_object(gathered, {"rank": rank})  # RNG states in checkpoints
        best = [{"w": torch.ones(1) * 7} if rank == 0 else None]
        dist.broadcast_object_list(best, src=0)  # the best weights on resume
        skipped = [None] * world_size
        dist.all_gather_object(skipped, [f"clip{rank}.mp4"])  # unreadable clips in evaluation
        if rank == 0:
            out.put((summed.tolist(), flag, gathered, float(best[0]["w"]), skipped))
    finally:
        dist.destroy_process_group()


def test_every_trainer_collective_on_a_group_created_like_the_cuda_path():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_collectives_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in processes:
        p.start()
    summed, flag, gathered, best, skipped = queue.get(timeout=120)
    for p in processes:
        p.join(60)
    assert summed == [[3, 3], [3, 3]] and flag is True and best == 7.0
    assert gathered == [{"rank": 0}, {"rank": 1}] and skipped == [["clip0.mp4"], ["clip1.mp4"]]
