"""Coarse-to-fine transfer on SynthGym, cached features, optimizer groups, data seed."""
import json

import pytest
import torch

from taggnn.cli import main
from taggnn.engine import load_config, train
from taggnn.engine.trainer import build_optimizer
from taggnn.errors import ConfigError
from taggnn.models import build_model_from_config

from ..helpers import SMALL

TINY = SMALL + ["train.epochs=1", "data.synth_train=32", "data.synth_val=16", "data.synth_test=16"]
CLI_TINY = [item for value in TINY for item in ("--set", value)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    summary = train(load_config("synthgym_pretrain", TINY), out, progress=False)
    assert summary["test"]["count"] == 16 and load_config("synthgym_pretrain").data.synth_task == "pretrain"
    return out


def test_pretraining_uses_coarse_labels_and_disjoint_clips(pretrained):
    from taggnn.data import SynthGym

    checkpoint = torch.load(pretrained / "best.pt", weights_only=True)
    assert checkpoint["classes"] == ["turn", "arm circle", "hop", "combo"] and checkpoint["num_classes"] == 4
    fine, coarse = SynthGym("train", length=8), SynthGym("pretrain_train", length=8, labels="coarse")
    assert not any(torch.equal(torch.from_numpy(fine.render(i)), torch.from_numpy(coarse.render(i)))
                   for i in range(8))
    assert coarse.targets == [label // 4 for label in coarse.labels]


def test_finetune_loads_the_exported_backbone(pretrained, tmp_path):
    weights = pretrained / "backbone.pt"
    state = torch.load(weights, weights_only=True)
    assert all(not k.startswith("backbone.") for k in state) and "stem.0.weight" in state
    config = load_config("synthgym_finetune", TINY + [f"model.weights={weights}"])
    model = build_model_from_config(config, 16)
    torch.testing.assert_close(model.backbone.state_dict()["stem.0.weight"], state["stem.0.weight"])
    summary = train(config, tmp_path / "ft", progress=False)
    assert summary["test"]["count"] == 16
    frozen = train(load_config("synthgym_frozen", TINY + [f"model.weights={weights}"]), tmp_path / "fz",
                   progress=False)
    after = torch.load(tmp_path / "fz" / "best.pt", weights_only=True)["model"]
    torch.testing.assert_close(after["backbone.stem.0.weight"], state["stem.0.weight"])  # never trained
    assert frozen["test"]["count"] == 16


def test_backbone_lr_mult_and_no_decay_groups():
    config = load_config("synthgym_finetune", ["model.weights=null", "optim.backbone_lr_mult=0.1",
                                               "optim.weight_decay=0.05"])
    optimizer = build_optimizer(config, build_model_from_config(config, 16))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone, no decay", "head", "head, no decay"}
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * groups["head"]["lr"])
    assert groups["head, no decay"]["weight_decay"] == 0 and groups["head"]["weight_decay"] == 0.05
    model = build_model_from_config(config, 16)
    no_decay = {id(p) for g in build_optimizer(config, model).param_groups if "no decay" in g["name"]
                for p in g["params"]}
    assert id(model.head.pos_embed.weight) in no_decay  # the positional table
    assert id(model.head.classifier.bias) in no_decay and id(model.head.classifier.weight) not in no_decay


def test_features_then_head_only_training(pretrained, tmp_path, capsys):
    weights = pretrained / "backbone.pt"
    features = tmp_path / "features"
    assert main(["features", "--config", "synthgym_frozen", *CLI_TINY, "--set", f"model.weights={weights}",
                 "--out", str(features), "--no-progress", "--device", "cpu"]) == 0
    info = json.loads((features / "info.json").read_text())
    assert info["grid"] == [2, 2, 2] and info["channels"] == 128  # 8 frames of 32x32
    train_split = torch.load(features / "train.pt", weights_only=True)
    assert train_split["features"].shape == (32, 128, 2, 2, 2) and train_split["labels"].shape == (32,)
    summary = train(load_config("synthgym_frozen", TINY + [f"model.weights={weights}", f"data.features={features}"]),
                    tmp_path / "head", progress=False)
    assert summary["test"]["count"] == 16
    # eval of a head-only checkpoint reads the features again, and finds the training's final test figures
    assert main(["eval", "--checkpoint", str(tmp_path / "head" / "best.pt"), "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "head" / "metrics_test.best.json").read_text())
    assert evaluated["count"] == 16 and evaluated["top1"] == pytest.approx(summary["test"]["top1"])
    # a config that does not match the features is refused, naming the difference
    with pytest.raises(ConfigError, match=r"made with other settings: data.num_frames: 8 \(features\) vs 16"):
        train(load_config("synthgym_frozen", TINY + [f"data.features={features}", "data.num_frames=16"]),
              tmp_path / "bad", progress=False)


def test_data_seed_is_separate_from_train_seed():
    from taggnn.engine.data import build_dataset

    a = build_dataset(load_config("synthgym_tiny", ["train.seed=1"]), "train", train=False)
    b = build_dataset(load_config("synthgym_tiny", ["train.seed=2"]), "train", train=False)
    c = build_dataset(load_config("synthgym_tiny", ["data.seed=2"]), "train", train=False)
    assert a.labels == b.labels and a.labels != c.labels
