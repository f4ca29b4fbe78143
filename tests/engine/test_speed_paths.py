"""The cheap paths of a training step give what the plain paths give."""
import torch
from torch.utils.data import Dataset

from taggnn.engine import load_config
from taggnn.engine.data import EpochSeeded
from taggnn.engine.trainer import build_optimizer, fused_optimizer_supported
from taggnn.models import build_model_from_config


class RandomItems(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.rand(3), index


class FixedItems(RandomItems):
    stochastic = False


def test_epoch_seeded_items_are_those_of_a_seeded_generator():
    dataset = EpochSeeded(RandomItems(), seed=3)
    dataset.set_epoch(2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    items = [dataset[i][0] for i in range(4)]
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is untouched
    for index, item in enumerate(items):
        # the previous implementation: fork the RNG, torch.manual_seed(f(seed, epoch, index))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((3 * 1_000_003 + 2) * 10_000_019 + index) % (2**63))
            assert torch.equal(item, torch.rand(3))
    assert torch.equal(dataset[1][0], items[1])  # any order, any worker: the same item


def test_epoch_seeded_does_not_reseed_accelerator_generators(monkeypatch):
    """torch.manual_seed would also reseed every CUDA generator (the dropout streams of a
    num_workers=0 CUDA run) per item; only the CPU generator is seeded."""
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.manual_seed called per item")

    monkeypatch.setattr(torch, "manual_seed", forbidden)
    monkeypatch.setattr(torch.random, "manual_seed", forbidden)
    dataset = EpochSeeded(RandomItems(), seed=3)
    assert dataset[0][0].shape == (3,)


def test_epoch_seeded_leaves_deterministic_datasets_alone():
    dataset = EpochSeeded(FixedItems(), seed=3)
    torch.manual_seed(0)
    first = dataset[0][0]
    assert not torch.equal(dataset[0][0], first)  # not reseeded per item: nothing to seed


def test_fused_adamw_when_supported_and_equal_updates():
    config = load_config("synthgym_tiny", ["model.ffn_dim=32"])
    torch.manual_seed(0)
    model = build_model_from_config(config, 16)
    optimizer = build_optimizer(config, model)
    assert optimizer.defaults["fused"] is True
    reference_model = build_model_from_config(config, 16)
    reference_model.load_state_dict(model.state_dict())
    reference = torch.optim.AdamW([{**g, "params": [dict(reference_model.named_parameters())[n]
                                                     for n, p in model.named_parameters()
                                                     if any(p is q for q in g["params"])]}
                                   for g in optimizer.param_groups], foreach=False)
    x = torch.randn(2, 3, 16, 64, 64)
    for _ in range(3):
        for m, opt in ((model, optimizer), (reference_model, reference)):
            torch.manual_seed(1)
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    meta = [{"params": [torch.nn.Parameter(torch.ones(2, device="meta"))]}]
    assert not fused_optimizer_supported(meta) and not fused_optimizer_supported([{"params": []}])


def test_fast_cpu_dropout_is_a_config_switch():
    for value in (True, False):
        config = load_config("synthgym_tiny", ["model.ffn_dim=32", f"model.fast_cpu_dropout={str(value).lower()}"])
        layers = build_model_from_config(config, 16).head.transformer.layers
        assert all(layer.fast_cpu_dropout is value for layer in layers)


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import pytest

    matplotlib = pytest.importorskip("matplotlib")
    from taggnn.engine.plots import save_confusion_matrix

    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's own backend (a notebook's, say): saving a figure must not switch it
    try:
        path = save_confusion_matrix(torch.eye(3, dtype=torch.long), ["a", "b", "c"], tmp_path / "cm.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
