"""The authors' checkpoint layouts: the bare state dict of the released files and the training
dict their train.py saves as last_checkpoint.pth (their evaluate.py reads both)."""
import logging

import numpy as np
import pytest
import torch

from taggnn.cli import main
from taggnn.models import convert_reference_state_dict, load_reference_checkpoint, reference_model
from taggnn.models.reference import read_reference_state
from taggnn.models.weights import WeightsError

from .test_tagnet import authors_state_dict


def training_dict(state, parameters):
    """What their train.py saves: model, Adam and CosineAnnealingLR states, epoch, best accuracy."""
    optimizer = torch.optim.Adam(parameters, lr=1e-5)
    for p in parameters:
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=60)
    scheduler.step()
    return {"epoch": 41, "model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(), "best_val_acc": np.float64(0.8125)}


def test_the_training_dict_loads_like_the_bare_state_dict(tmp_path, caplog):
    """The bare layout's loading is tested end to end in test_fidelity.py; here the training dict
    must give the weights (and so the logits) of its model_state_dict loaded as a bare state dict."""
    torch.manual_seed(0)
    model = reference_model("haa500")
    state = authors_state_dict(model)
    small = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    torch.save(training_dict(state, small), tmp_path / "last_checkpoint.pth")
    with caplog.at_level(logging.INFO, logger="taggnn"):
        trained, setup = load_reference_checkpoint(tmp_path / "last_checkpoint.pth", "haa500")
    assert setup.num_classes == 500
    log = caplog.text
    assert "training checkpoint (epoch 41" in log and "optimizer_state_dict, scheduler_state_dict" in log
    model.load_state_dict(convert_reference_state_dict(state, model.head.grid))  # the bare layout's weights
    theirs, ours = model.eval().state_dict(), trained.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert torch.equal(ours["head.classifier.weight"], state["classifier.1.weight"])
    tokens = torch.randn(2, 512, *model.head.grid)  # the backbone's output for two clips
    with torch.no_grad():
        assert torch.equal(model.head(tokens), trained.head(tokens))


def test_layouts_are_read_and_others_named(tmp_path):
    state = {"pos_embedding": torch.randn(1, 4, 2), "classifier.1.weight": torch.randn(3, 2)}
    torch.save(training_dict({f"module.{k}": v for k, v in state.items()}, [torch.nn.Parameter(torch.zeros(1))]),
               tmp_path / "dataparallel.pth")
    read = read_reference_state(tmp_path / "dataparallel.pth")
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    with pytest.raises(WeightsError, match="is a folder; expected the authors' checkpoint file"):
        read_reference_state(tmp_path)
    torch.save({"model": state, "config": {"name": "x"}}, tmp_path / "best.pt")
    with pytest.raises(WeightsError, match="is a taggnn checkpoint, not an authors' one: evaluate it with taggnn "
                                           "eval --checkpoint"):
        read_reference_state(tmp_path / "best.pt")
    torch.save({"epoch": 3, "best_val_acc": 0.5}, tmp_path / "no_model.pth")
    with pytest.raises(WeightsError, match="dict with model_state_dict, optimizer_state_dict.*found a mapping with "
                                           "keys epoch, best_val_acc"):
        read_reference_state(tmp_path / "no_model.pth")
    (tmp_path / "config.yaml").write_text("model:\n  K: 2\n")
    with pytest.raises(WeightsError, match="not an authors' checkpoint: it is a YAML file"):
        read_reference_state(tmp_path / "config.yaml")


def test_eval_reference_of_a_folder_is_one_line(tmp_path, capsys):
    assert main(["eval", "--reference", str(tmp_path), "--dataset", "haa500", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder; expected the authors' checkpoint file" in err
