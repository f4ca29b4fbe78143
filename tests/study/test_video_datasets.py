"""Studies on video datasets laid out as FineGym, HAA500, a CSV list and a folder tree: tiny
clips the tests write once, copied into each layout."""
import json
import shutil

import pytest

from taggnn.study import LocalExecutor, parse_spec, run_study
from tests.data.helpers import write_index_video

pytestmark = pytest.mark.slow  # whole studies: make test runs them as its second step

SMALL = ["data.num_frames=4", "data.crop_size=32", "data.short_side=32", "train.batch_size=4",
         "train.eval_batch_size=8", "model.ffn_dim=32", "train.epochs=1", "train.device=cpu",
         "model.freeze_backbone=true", "data.normalization=kinetics"]
CLASSES = ["jump", "turn"]
COUNTS = {"train": 4, "val": 2, "test": 2}  # clips per class (HAA500 has one val clip per class)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """``(class, split, number) -> video file``: each distinct clip written once."""
    folder = tmp_path_factory.mktemp("clips")
    videos = {}
    for label, name in enumerate(CLASSES):
        for split, count in COUNTS.items():
            for number in range(count):
                videos[name, split, number] = write_index_video(
                    folder / f"{name}_{split}_{number}.mp4", 6 + number + 2 * label)
    return videos


def folder_layout(root, clips):
    for (name, split, number), video in clips.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(video, root / split / name / f"{name}_{number}.mp4")
    return ["data.dataset=folder", f"data.root={root}", "data.num_classes=2"]


def haa500_layout(root, clips):
    first = {"train": 0, "val": 16, "test": 17}  # the official split by clip number
    for (name, split, number), video in clips.items():
        if split == "val" and number > 0:
            continue
        (root / "video" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(video, root / "video" / name / f"{name}_{first[split] + number:03d}.mp4")
    return ["data.dataset=haa500", f"data.root={root}", "data.num_classes=2"]


def finegym_layout(root, clips):
    (root / "annotations").mkdir(parents=True)
    (root / "subactions").mkdir()
    (root / "annotations" / "gym99_categories.txt").write_text(
        "".join(f"Clabel: {label}; set: 1; Glabel: {label + 1}; (VT) {name}\n" for label, name in enumerate(CLASSES)))
    lines = {"train": [], "val": []}
    for index, ((name, split, number), video) in enumerate(clips.items()):
        if split == "test":
            continue  # FineGym's test split is its val split
        clip_id = f"V{index:010d}_E_000100_000150_A_{index:04d}_{index + 1:04d}"
        shutil.copy(video, root / "subactions" / f"{clip_id}.mp4")
        lines[split].append(f"{clip_id} {CLASSES.index(name)}\n")
    (root / "annotations" / "gym99_train_element_v1.1.txt").write_text("".join(lines["train"]))
    (root / "annotations" / "gym99_val_element.txt").write_text("".join(lines["val"]))
    return ["data.dataset=finegym", f"data.root={root}", "data.num_classes=99"]


def csv_layout(root, clips):
    (root / "videos").mkdir(parents=True)
    rows = {split: ["FileName,Class,TotalFrames,ClassEncoded"] for split in COUNTS}
    for (name, split, number), video in clips.items():
        shutil.copy(video, root / "videos" / video.name)
        frames = 6 + number + 2 * CLASSES.index(name)
        rows[split].append(f"{video.name},{name},{frames},{CLASSES.index(name)}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return ["data.dataset=csv", f"data.root={root / 'videos'}", "data.num_classes=2"] + [
        f"data.{split}_csv={root / f'{split}.csv'}" for split in COUNTS]


LAYOUTS = {  # the layout, and the clips of each split the study's feature cache holds
    "folder": (folder_layout, {"train": 8, "val": 4, "test": 4}),
    "haa500": (haa500_layout, {"train": 8, "val": 2, "test": 4}),
    "finegym": (finegym_layout, {"train": 8, "val": 4, "test": 4}),
    "csv": (csv_layout, {"train": 8, "val": 4, "test": 4}),
}


@pytest.fixture(scope="module")
def executor():
    """One worker process (one torch thread) for every study of the module."""
    with LocalExecutor(1, threads=1) as executor:
        yield executor


@pytest.mark.parametrize("dataset", list(LAYOUTS))
def test_a_study_on_a_video_dataset(clips, executor, tmp_path, dataset):
    layout, split_clips = LAYOUTS[dataset]
    settings = layout(tmp_path / "data", clips) + SMALL
    spec = parse_spec(f"base: synthgym_tiny\nset: [{', '.join(settings)}]\nseeds: [0, 1]\nrows: [B, B+TE]\n"
                      f"reference: B\nhead_only: true\nselect: best\nmetric: mca\n")
    out = tmp_path / "study"
    records = run_study(spec, out, executor=executor, progress=False)
    classes = 99 if dataset == "finegym" else 2
    assert [(r["row"], r["seed"], r["status"], r["num_classes"]) for r in records] == [
        ("B", 0, "done", classes), ("B", 1, "done", classes), ("B+TE", 0, "done", classes),
        ("B+TE", 1, "done", classes)]
    [features] = list((out / "features").iterdir())  # one extraction for both rows and seeds
    info = json.loads((features / "info.json").read_text())
    assert {split: entry["clips"] for split, entry in info["splits"].items()} == split_clips
    for record in records:
        tested = json.loads((out / record["folder"] / "metrics_test.json").read_text())
        assert record["metrics"]["mca"] == 100 * tested["mca"] and tested["count"] == split_clips["test"]
