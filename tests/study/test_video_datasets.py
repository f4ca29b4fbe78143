"""A study on your own videos: a folder tree of tiny clips the test writes."""
import json

from taggnn.cli import main
from tests.data.helpers import write_index_video

SMALL = ["data.num_frames=4", "data.crop_size=32", "data.short_side=32", "train.batch_size=4",
         "train.eval_batch_size=8", "model.ffn_dim=32", "train.epochs=1", "train.device=cpu",
         "model.freeze_backbone=true", "data.num_classes=2", "data.normalization=kinetics"]


def test_a_study_on_a_folder_of_videos(tmp_path, capsys):
    root = tmp_path / "videos"
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for name in ("jump", "turn"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                write_index_video(folder / f"{name}_{number}.mp4", 6 + number)
    spec = tmp_path / "study.yaml"
    spec.write_text(f"base: synthgym_tiny\nset: [data.dataset=folder, data.root={root}, {', '.join(SMALL)}]\n"
                    f"seeds: [0, 1]\nrows: [B, B+TE]\nreference: B\nhead_only: true\nselect: best\nmetric: mca\n")
    out = tmp_path / "study"
    assert main(["study", "run", str(spec), "--out", str(out), "--workers", "1", "--threads", "1",
                 "--no-progress"]) == 0
    records = json.loads((out / "records.json").read_text())
    assert [(r["row"], r["seed"], r["status"], r["num_classes"]) for r in records] == [
        ("B", 0, "done", 2), ("B", 1, "done", 2), ("B+TE", 0, "done", 2), ("B+TE", 1, "done", 2)]
    info = json.loads(next((out / "features").iterdir()).joinpath("info.json").read_text())
    assert {split: entry["clips"] for split, entry in info["splits"].items()} == {"train": 8, "val": 4, "test": 4}
    for record in records:
        tested = json.loads((out / record["folder"] / "metrics_test.json").read_text())
        assert record["metrics"]["mca"] == 100 * tested["mca"] and tested["count"] == 4
