"""The authors' pipeline reproduced exactly (frame indices, crops, CSV layout, BatchNorm,
schedule, evaluation precision, released checkpoints)."""
import json
import shutil

import pytest
import torch

from taggnn.cli import main
from taggnn.data import VideoCSV, sample_indices, train_transform
from taggnn.engine.config import load_config
from taggnn.models import build_model_from_config, load_reference_checkpoint, reference_model

from ..data.helpers import read_index, write_index_video
from .test_tagnet import authors_state_dict


def test_linspace_equals_the_authors_truncation():
    for n in list(range(1, 130)) + [257, 999, 2001]:
        for T in (1, 2, 7, 8, 16, 32, 64):
            assert sample_indices(n, T, "linspace") == torch.linspace(0, n - 1, T).long().tolist(), (n, T)


def test_authors_crop_is_square_after_the_flip():
    from torchvision.transforms import v2

    steps = list(train_transform(112, style="authors"))
    kinds = [type(s).__name__ for s in steps]
    assert kinds.index("RandomHorizontalFlip") < kinds.index("RandomResizedCrop")
    crop = steps[kinds.index("RandomResizedCrop")]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.ratio == (1.0, 1.0) and crop.scale == (0.5, 1.0)


def test_csv_in_the_authors_layout_uses_total_frames(tmp_path):
    (tmp_path / "videos" / "Jump").mkdir(parents=True)
    write_index_video(tmp_path / "videos" / "Jump" / "a.mp4", 40)
    (tmp_path / "split.csv").write_text("FileName,Class,TotalFrames,ClassEncoded\na.mp4,Jump,20,0\n")
    dataset = VideoCSV(tmp_path / "split.csv", tmp_path / "videos", layout="authors", num_frames=4,
                       sampling="linspace")
    assert dataset.samples[0][0].endswith("videos/Jump/a.mp4")
    assert [read_index(f) for f in dataset[0][0]] == torch.linspace(0, 19, 4).long().tolist()  # over TotalFrames
    with pytest.raises(FileNotFoundError, match=r"missing on disk \(first: .*videos/a.mp4\)"):
        VideoCSV(tmp_path / "split.csv", tmp_path / "videos", num_frames=4)  # flat layout: the path tried


def test_authors_presets_set_their_backbone_norms_schedule_and_precision():
    config = load_config("haa500_authors", ["model.weights=null"])
    assert config.model.bn_momentum == 0.9 and config.model.bn_eps == 1e-3 and config.model.pos_init == "normal"
    assert config.optim.schedule_unit == "epoch" and config.train.eval_amp == "off"
    model = build_model_from_config(config, 500)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert norms and all(m.momentum == 0.9 and m.eps == 1e-3 for m in norms)
    reference = reference_model("haa500")
    assert all(m.momentum == 0.9 for m in reference.backbone.modules() if isinstance(m, torch.nn.BatchNorm3d))
    for name in ("gym99_r2plus1d34", "gym288_r2plus1d34", "haa500_r2plus1d34", "synthgym_tiny"):
        assert load_config(name).train.eval_amp == "off"  # evaluation runs in float32 for every preset
    assert load_config("gym288_r2plus1d34").model.ffn_dim == 1024
    assert load_config("gym288_authors").model.ffn_dim == 2048
    assert load_config("gym288_r2plus1d34").data.version == "v1.1"


def test_epoch_schedule_equals_cosine_annealing_per_epoch():
    from taggnn.engine.trainer import build_scheduler

    config = load_config("synthgym_tiny", ["optim.schedule_unit=epoch", "optim.warmup_epochs=0", "train.epochs=5"])
    parameter = torch.nn.Parameter(torch.zeros(1))
    ours = torch.optim.Adam([parameter], lr=config.optim.lr)
    scheduler = build_scheduler(config, ours, steps_per_epoch=3)
    theirs = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.lr)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=5)
    for epoch in range(5):
        for _ in range(3):
            assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-9)
            ours.step()
            scheduler.step()
        theirs.step()
        reference.step()


def test_holdout_spares_small_classes(tmp_path):
    from taggnn.data import FineGym

    from ..data.test_datasets import GYM_CATEGORIES

    (tmp_path / "annotations").mkdir()
    (tmp_path / "subactions").mkdir()
    (tmp_path / "annotations" / "gym99_categories.txt").write_text(GYM_CATEGORIES)
    lines = [f"c{i:03d} 0" for i in range(30)] + [f"d{i:03d} 1" for i in range(5)]
    (tmp_path / "annotations" / "gym99_train_element_v1.1.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        (tmp_path / "subactions" / f"{line.split()[0]}.mp4").write_bytes(b"x")
    held = FineGym(tmp_path, "holdout", holdout=0.2)
    assert held.targets == [0] * 6  # class 1 (5 clips < 10) keeps all its clips
    assert FineGym(tmp_path, "holdout", holdout=0.2, holdout_seed=1).samples != held.samples


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    torch.manual_seed(0)
    model = reference_model("haa500")
    files = {}
    for names in (("backbone", "classifier"), ("csnmodel", "mlp_head")):
        state = authors_state_dict(model, *names)
        state["edge_index"] = torch.zeros(2, 10, dtype=torch.long)  # the first revision's graph buffer
        files[names[0]] = root / f"{names[0]}_haa500_best.pth"
        torch.save(state, files[names[0]])
    yield root, files, model
    shutil.rmtree(root, ignore_errors=True)  # two full-size checkpoints (~0.5 GB)


def test_the_converter_skips_the_graph_buffer(reference_files):
    _, files, _ = reference_files
    for prefix, path in files.items():
        saved = torch.load(path, weights_only=True)
        loaded, _ = load_reference_checkpoint(path, "haa500")
        head = "classifier" if prefix == "backbone" else "mlp_head"
        assert torch.equal(loaded.head.classifier.weight, saved[f"{head}.1.weight"])


def test_eval_reference_end_to_end(reference_files, tmp_path, capsys):
    root, files, _ = reference_files
    video_root = tmp_path / "videos"
    (video_root / "Jump").mkdir(parents=True)
    write_index_video(video_root / "Jump" / "clip.mp4", 20, height=128, width=160)
    (tmp_path / "test.csv").write_text("FileName,Class,TotalFrames,ClassEncoded\nclip.mp4,Jump,20,3\n")
    for path in files.values():
        assert main(["eval", "--reference", str(path), "--dataset", "haa500", "--data-root", str(video_root),
                     "--csv", str(tmp_path / "test.csv"), "--out", str(tmp_path), "--no-progress",
                     "--device", "cpu", "--set", "data.num_workers=0"]) == 0
        out = capsys.readouterr().out
        assert "haa500" in out and "MCA (classes present, their convention)" in out and "clips 1" in out
    # tagged with the file's name and the overrides: the two files' results sit side by side
    metrics = json.loads((tmp_path / "metrics_reference_haa500_test.backbone_haa500_best.data.num_workers=0.json")
                         .read_text())
    assert metrics["count"] == 1 and metrics["preprocessing"] == "authors"
