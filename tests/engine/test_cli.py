import json

import pytest

from taggnn.cli import main
from taggnn.data.synthgym import write_split

SMALL = ["--set", "data.num_frames=8", "--set", "data.crop_size=32", "--set", "data.short_side=32",
         "--set", "data.synth_size=32", "--set", "data.synth_train=32", "--set", "data.synth_val=16",
         "--set", "data.synth_test=16", "--set", "train.batch_size=8", "--set", "train.epochs=1",
         "--set", "model.ffn_dim=32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", "synthgym_tiny", "--out", str(out), "--no-progress", *SMALL]) == 0
    return out


def test_train_then_eval(run, capsys):
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--split", "val", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "val: top-1" in out and "MCA (union)" in out
    assert json.loads((run / "metrics_val.best.json").read_text())["count"] == 16
    assert (run / "per_class_val.best.csv").read_text().splitlines()[0] == "class,name,support,correct,accuracy"


def test_predict_on_a_written_mp4(run, tmp_path, capsys):
    write_split(tmp_path, "test", count=2, num_frames=8, size=32)
    assert main(["predict", str(tmp_path / "test" / "000000.mp4"), "--checkpoint", str(run / "best.pt"),
                 "--topk", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    predictions = result[0]["predictions"]
    assert len(predictions) == 3 and abs(sum(p["probability"] for p in predictions)) <= 1.0 + 1e-6
    assert predictions[0]["probability"] >= predictions[1]["probability"]
    assert predictions[0]["name"]


def test_profile(capsys):
    assert main(["profile", "--config", "gym99_r2plus1d34", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "63,491,975" in out and "r2plus1d_34 + TAG-Head" in out


def test_tsne(run, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "tsne.png"
    assert main(["tsne", "--checkpoint", str(run / "best.pt"), "--split", "test", "--max-clips", "16",
                 "--out", str(target), "--device", "cpu"]) == 0
    assert target.stat().st_size > 1000


def test_config_errors_exit_2(capsys):
    assert main(["train", "--config", "synthgym_tiny", "--set", "optim.lrate=1"]) == 2
    assert "unknown config key 'optim.lrate'; valid keys:" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "/nonexistent/best.pt"]) == 2


def test_eval_cannot_change_the_model(run, capsys):
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--set", "model.K=4"]) == 2
    assert "cannot be changed at evaluation time" in capsys.readouterr().err


def test_help_everywhere(capsys):
    for command in ("train", "eval", "predict", "profile", "tsne"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_multi_view_eval_predict_and_dump(tmp_path, capsys):
    import numpy as np

    for split, count in (("train", 16), ("val", 8), ("test", 6)):
        write_split(tmp_path / "v", split, count=count, num_frames=12, size=40)
    out = tmp_path / "run"
    csvs = [item for s in ("train", "val", "test")
            for item in ("--set", f"data.{s}_csv={tmp_path / 'v' / (s + '.csv')}")]
    assert main(["train", "--out", str(out), "--no-progress", *SMALL, "--set", "data.dataset=csv", "--set",
                 f"data.root={tmp_path / 'v'}", "--set", "data.short_side=40", *csvs]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--no-progress", "--set", "eval.num_clips=3",
                 "--set", "eval.num_crops=3", "--dump", str(tmp_path / "scores.npz")]) == 0
    text = capsys.readouterr().out
    assert "clips 6" in text
    dump = np.load(tmp_path / "scores.npz")
    assert dump["probabilities"].shape == (6, 16) and np.allclose(dump["probabilities"].sum(1), 1, atol=1e-5)
    assert len(dump["paths"]) == 6 and str(dump["views"]) == "3x3 prob"
    metrics = json.loads((out / "metrics_test.best.eval.num_clips=3_eval.num_crops=3.json").read_text())
    assert metrics["views"] == "3x3 (prob)" and metrics["count"] == 6
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--no-progress", "--dump",
                 str(tmp_path / "scores.csv")]) == 0
    assert (tmp_path / "scores.csv").read_text().splitlines()[0].startswith("path,label,predicted,")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "v" / "test" / "000000.mp4"), "--checkpoint", str(out / "best.pt"),
                 "--set", "eval.num_clips=2", "--set", "eval.num_crops=3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    top = [p["probability"] for p in result[0]["predictions"]]
    assert len(top) == 5 and 0 < sum(top) <= 1 + 1e-6 and top == sorted(top, reverse=True)


def test_tsne_samples_stratified_over_classes():
    from taggnn.cli import stratified_indices

    labels = [0] * 50 + [1] * 30 + [2] * 5
    chosen = stratified_indices(labels, 12, seed=0)
    counts = [sum(labels[i] == c for i in chosen) for c in range(3)]
    assert len(chosen) == 12 and counts == [4, 4, 4]  # not the first 12 in file order (all class 0)
    assert stratified_indices(labels, 12, seed=0) == chosen and stratified_indices(labels, 12, seed=1) != chosen
    assert sorted(stratified_indices(labels, 100)) == list(range(85))


def test_tsne_colours_do_not_repeat_beyond_20_classes():
    pytest.importorskip("matplotlib")
    from taggnn.engine.plots import class_colours

    for n in (16, 99, 288, 500):
        colours = [tuple(round(c, 6) for c in colour) for colour in class_colours(n)]
        assert len(set(colours)) == n


def test_tsne_lays_out_one_row_per_checkpoint(tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np

    from taggnn.engine.plots import save_tsne

    points = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.arange(30) % 3
    panels = {f"{kind} model{i}": points for i in range(3) for kind in ("backbone", "head")}
    path = save_tsne(panels, labels, tmp_path / "t.png", ["a", "b", "c"], columns=2)
    from PIL import Image

    width, height = Image.open(path).size
    assert height > width  # 3 rows x 2 columns
