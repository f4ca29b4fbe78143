import logging

import pytest
import torch

from taggnn.data import (
    HAA500,
    AnnotationError,
    FineGym,
    SkippedClip,
    VideoCSV,
    VideoError,
    VideoFolder,
    collate_clips,
    eval_transform,
    sample_indices,
)

from .helpers import read_index, write_index_video

GYM_CATEGORIES = (
    "Clabel: 0; set: 1; Glabel: 1; (VT) round-off, flic-flac with 0.5 turn on, "
    "stretched salto forward with 0.5 turn off\n"
    """Clabel: 1; set: 1; Glabel: 2; (VT) round-off, flic-flac on, stretched salto backward with 1 turn off
Clabel: 2; set: 21; Glabel: 8; (FX) switch leap with 0.5 turn
""")
IDS = ["A0xAXXysHUo_E_002184_002237_A_0035_0036", "A0xAXXysHUo_E_002184_002237_A_0040_0042",
       "B1yBYYztIVp_E_000100_000150_A_0001_0003", "B1yBYYztIVp_E_000100_000150_A_0010_0012"]


@pytest.fixture(scope="module")
def gym_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("finegym")
    (root / "annotations").mkdir()
    (root / "subactions").mkdir()
    (root / "annotations" / "gym99_categories.txt").write_text(GYM_CATEGORIES)
    (root / "annotations" / "gym99_train_element_v1.1.txt").write_text(f"{IDS[0]} 0\n{IDS[1]} 2\n{IDS[2]} 1\n")
    (root / "annotations" / "gym99_train_element_v1.0.txt").write_text(f"{IDS[0]} 0\n")
    (root / "annotations" / "gym99_val_element.txt").write_text(f"{IDS[3]} 1\n")
    for i, clip_id in enumerate(IDS):
        write_index_video(root / "subactions" / f"{clip_id}.mp4", 25 + 10 * i)
    return root


def test_finegym_official_layout(gym_root):
    train = FineGym(gym_root, "train", num_frames=64)
    assert len(train) == 3 and train.targets == [0, 2, 1]
    assert train.classes[0] == "round-off, flic-flac with 0.5 turn on, stretched salto forward with 0.5 turn off"
    assert train.classes[2] == "switch leap with 0.5 turn"
    clip, label = train[1]
    assert clip.shape == (64, 48, 80, 3) and label == 2
    assert [read_index(f) for f in clip] == sample_indices(35, 64)  # 35 frames sampled to 64 repeat
    assert len(FineGym(gym_root, "train", version="v1.0")) == 1
    val = FineGym(gym_root, "val", num_frames=8, transform=eval_transform(32))
    clip, label = val[0]
    assert clip.shape == (3, 8, 32, 32) and label == 1
    assert len(FineGym(gym_root, "test")) == 1


def test_finegym_missing_clips_are_reported(gym_root, tmp_path, caplog):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "gym99_categories.txt").write_text(GYM_CATEGORIES)
    (tmp_path / "annotations" / "gym99_val_element.txt").write_text(f"{IDS[3]} 1\nmissing_one 0\nmissing_two 2\n")
    (tmp_path / "subactions").mkdir()
    (tmp_path / "subactions" / f"{IDS[3]}.mp4").write_bytes((gym_root / "subactions" / f"{IDS[3]}.mp4").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"2 of 3 clips .* missing on disk \(first: .*missing_one\.mp4"):
        FineGym(tmp_path, "val")
    with caplog.at_level(logging.WARNING):
        dataset = FineGym(tmp_path, "val", on_error="skip")
    assert len(dataset) == 1 and "2 of 3 clips" in caplog.text


@pytest.mark.parametrize("content,message", [
    ("Clabel: 0; set: 1; Glabel: 1; (VT) a\nClabel 1 set 1 (VT) b\n", r"gym99_categories\.txt:2: expected 'Clabel"),
    ("Clabel: 0; set: 1; Glabel: 1; (VT) a\nClabel: 0; set: 1; Glabel: 1; (VT) b\n",
     r":2: class label 0 appears twice"),
])
def test_malformed_categories(tmp_path, content, message):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "gym99_categories.txt").write_text(content)
    (tmp_path / "annotations" / "gym99_train_element_v1.1.txt").write_text("x 0\n")
    with pytest.raises(AnnotationError, match=message):
        FineGym(tmp_path, "train")


@pytest.mark.parametrize("line,message", [("clip_a", "expected '<clip id> <integer label>'"),
                                           ("clip_a zero", "expected '<clip id> <integer label>'"),
                                           ("clip_a 7", r"label 7 outside 0..2")])
def test_malformed_split_lines(gym_root, tmp_path, line, message):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "gym99_categories.txt").write_text(GYM_CATEGORIES)
    (tmp_path / "annotations" / "gym99_train_element_v1.1.txt").write_text(f"{IDS[0]} 0\n\n{line}\n")
    with pytest.raises(AnnotationError, match=rf"gym99_train_element_v1\.1\.txt:3: {message}"):
        FineGym(tmp_path, "train")


def test_finegym_bad_arguments(gym_root, tmp_path):
    with pytest.raises(ValueError, match="num_classes must be 99 or 288"):
        FineGym(gym_root, num_classes=100)
    with pytest.raises(FileNotFoundError,
                       match=r"gym288_val_element\.txt not found \(see datasets/finegym/README\.md\)"):
        FineGym(gym_root, num_classes=288, version="v1.0", split="val")


HAA_CLASSES = ["blowing kisses", "play_ otamatone", "ALS_IceBucket_Challenge", "battle-rope_jumping-jack"]


@pytest.fixture(scope="module")
def haa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("haa500")
    for c, name in enumerate(HAA_CLASSES):
        folder = root / "video" / name
        folder.mkdir(parents=True)
        for number in (0, 5, 15, 16, 17, 19):
            write_index_video(folder / f"{name}_{number:03d}.mp4", 9 + c)
    (root / "video" / HAA_CLASSES[0] / "notes.txt").write_text("ignored")
    return root


def test_haa500_splits_and_sorted_labels(haa_root):
    train, val, test = (HAA500(haa_root, s, num_frames=32) for s in ("train", "val", "test"))
    assert train.classes == sorted(HAA_CLASSES) and train.classes[0] == "ALS_IceBucket_Challenge"
    assert (len(train), len(val), len(test)) == (12, 4, 8)
    assert all(path.endswith(("_000.mp4", "_005.mp4", "_015.mp4")) for path, _ in train.samples)
    assert all(path.endswith("_016.mp4") for path, _ in val.samples)
    label = train.classes.index("play_ otamatone")
    path, sample_label = next(s for s in train.samples if "play_ otamatone" in s[0])
    assert sample_label == label
    clip, _ = val[0]
    assert clip.shape == (32, 48, 80, 3)  # a 9+ frame clip sampled to 32
    with pytest.raises(ValueError, match="split must be one of"):
        HAA500(haa_root, "dev")


def test_video_csv_round_trip_and_errors(haa_root, tmp_path):
    video_root = haa_root / "video"
    rows = ["FileName,Class,TotalFrames,ClassEncoded"]
    for label, name in enumerate(sorted(HAA_CLASSES)):
        rows.append(f"{name}/{name}_000.mp4,{name},{9 + HAA_CLASSES.index(name)},{label}")
    (tmp_path / "ok.csv").write_text("\n".join(rows) + "\n")
    dataset = VideoCSV(tmp_path / "ok.csv", video_root, num_frames=4)
    assert dataset.classes == sorted(HAA_CLASSES) and len(dataset) == 4
    assert dataset[2][0].shape == (4, 48, 80, 3)

    (tmp_path / "header.csv").write_text("path,label\nx.mp4,0\n")
    with pytest.raises(AnnotationError,
                       match=r"header\.csv:1: expected the header FileName,Class,TotalFrames,ClassEncoded"):
        VideoCSV(tmp_path / "header.csv", video_root)
    (tmp_path / "bad.csv").write_text(rows[0] + "\n" + rows[1] + "\nonly,two\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv:3: expected 4 columns, got 2"):
        VideoCSV(tmp_path / "bad.csv", video_root)
    (tmp_path / "label.csv").write_text(rows[0] + "\na.mp4,walk,10,x\n")
    with pytest.raises(AnnotationError, match=r"label\.csv:2: ClassEncoded must be an integer"):
        VideoCSV(tmp_path / "label.csv", video_root)


def test_video_folder(haa_root):
    dataset = VideoFolder(haa_root / "video", num_frames=2)
    assert dataset.classes == sorted(HAA_CLASSES) and len(dataset) == 24
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        VideoFolder(haa_root / "nothing")


def test_on_error_skip_drops_the_clip_with_its_label(haa_root, tmp_path, caplog):
    folder = tmp_path / "walk"
    folder.mkdir()
    (folder / "a_broken.mp4").write_bytes(b"\x00" * 100)
    write_index_video(folder / "b_good.mp4", 12)
    strict = VideoFolder(tmp_path, num_frames=4)
    with pytest.raises(VideoError, match=r"a_broken\.mp4"):
        strict[0]
    lenient = VideoFolder(tmp_path, num_frames=4, on_error="skip")
    with caplog.at_level(logging.WARNING):
        skipped = lenient[0]
    assert isinstance(skipped, SkippedClip) and skipped.path.endswith("a_broken.mp4")
    clip, label = lenient[1]
    assert [read_index(f) for f in clip] == [1, 4, 7, 10]
    assert len(lenient.failures) == 1 and lenient.failures[0][0].endswith("a_broken.mp4")
    assert "skipping unreadable clip" in caplog.text


def test_skipped_clips_never_take_another_clips_label(tmp_path):
    """Regression: 8 clips with labels 0..7, 4 truncated; the readable clips keep their own labels."""
    rows = ["FileName,Class,TotalFrames,ClassEncoded"]
    for i in range(8):
        path = write_index_video(tmp_path / f"clip{i}.mp4", 16)
        if i % 2 == 0:  # truncate: keep the header only
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 8])
        rows.append(f"clip{i}.mp4,class{i},16,{i}")
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    dataset = VideoCSV(tmp_path / "split.csv", tmp_path, num_frames=8, on_error="skip")
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_clips)
    clips, labels, skipped = next(iter(loader))
    assert labels.tolist() == [1, 3, 5, 7]
    assert clips.shape[0] == 4
    assert sorted(p.rsplit("/", 1)[1] for p in skipped) == ["clip0.mp4", "clip2.mp4", "clip4.mp4", "clip6.mp4"]


def test_folder_splits_take_the_training_classes(tmp_path):
    for split, names in (("train", ["a", "b", "c"]), ("test", ["a", "c"])):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            write_index_video(tmp_path / split / name / "v.mp4", 4)
    train = VideoFolder(tmp_path / "train", num_frames=2)
    test = VideoFolder(tmp_path / "test", num_frames=2, classes=train.classes)
    assert test.classes == ["a", "b", "c"] and test.targets == [0, 2]  # "c" keeps label 2
    assert VideoFolder(tmp_path / "test", num_frames=2).targets == [0, 1]  # what numbering per split would do
    (tmp_path / "test" / "zebra").mkdir()
    write_index_video(tmp_path / "test" / "zebra" / "v.mp4", 4)
    with pytest.raises(AnnotationError, match="class 'zebra' is not one of the 3 training classes"):
        VideoFolder(tmp_path / "test", num_frames=2, classes=train.classes)


def test_csv_files_must_number_classes_alike(tmp_path):
    write_index_video(tmp_path / "v.mp4", 4)
    (tmp_path / "train.csv").write_text("FileName,Class,TotalFrames,ClassEncoded\nv.mp4,run,4,0\nv.mp4,jump,4,1\n")
    (tmp_path / "test.csv").write_text("FileName,Class,TotalFrames,ClassEncoded\nv.mp4,jump,4,0\n")
    train = VideoCSV(tmp_path / "train.csv", tmp_path, num_frames=2)
    with pytest.raises(AnnotationError, match=r"test\.csv:2: ClassEncoded 0 is 'jump' here but 'run' in the training"):
        VideoCSV(tmp_path / "test.csv", tmp_path, num_frames=2, classes=train.classes)


def test_random_sampling_with_seed_is_reproducible(haa_root):
    a = HAA500(haa_root, "train", num_frames=4, sampling="random", seed=3)
    b = HAA500(haa_root, "train", num_frames=4, sampling="random", seed=3)
    assert torch.equal(a[0][0], b[0][0])
    a.set_epoch(1)
    assert [read_index(f) for f in a[0][0]] != [] and a.epoch == 1


def test_finegym_holdout_is_disjoint_stratified_and_stable(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "subactions").mkdir()
    (tmp_path / "annotations" / "gym99_categories.txt").write_text(GYM_CATEGORIES)
    lines = [f"clip_{i:03d} {i % 3}" for i in range(60)]
    (tmp_path / "annotations" / "gym99_train_element_v1.1.txt").write_text("\n".join(lines) + "\n")
    for i in range(60):
        (tmp_path / "subactions" / f"clip_{i:03d}.mp4").write_bytes(b"x")  # existence is all that is checked here
    train = FineGym(tmp_path, "train", holdout=0.1)
    held = FineGym(tmp_path, "holdout", holdout=0.1)
    assert len(train) + len(held) == 60 and len(held) == 6
    assert not {p for p, _ in train.samples} & {p for p, _ in held.samples}
    assert sorted(held.targets) == [0, 0, 1, 1, 2, 2]  # 10% of every class
    assert held.samples == FineGym(tmp_path, "holdout", holdout=0.1).samples
    with pytest.raises(ValueError, match="split 'holdout' needs holdout > 0"):
        FineGym(tmp_path, "holdout")
    with pytest.raises(ValueError, match=r"holdout must be a fraction in \[0, 1\)"):
        FineGym(tmp_path, "train", holdout=1.5)
