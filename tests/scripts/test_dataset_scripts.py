"""The scripts under datasets/ on videos the tests create."""
import importlib.util
import json
import logging
from pathlib import Path

from taggnn.data import FineGym, count_frames, load_clip

from ..data.helpers import read_index, write_index_video

ROOT = Path(__file__).resolve().parents[2]


def load_script(relative):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_"), ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = load_script("datasets/finegym/prepare.py")
check_layout = load_script("datasets/haa500/check_layout.py")

ANNOTATION = {
    "vidA": {
        "E_000002_000006": {"event": 1, "timestamps": [[2.0, 6.0]], "segments": {
            "A_0001_0002": {"stages": 1, "timestamps": [[1.0, 2.0]]},
            "A_0000_0003": {"stages": 2, "timestamps": [[0.5, 1.0], [1.5, 2.5]]},
        }},
        "E_000007_000008": {"event": 2, "timestamps": [[7.0, 8.0]], "segments": None},
    },
    "vidMissing": {"E_000001_000002": {"event": 1, "timestamps": [[1.0, 2.0]], "segments": {
        "A_0000_0001": {"stages": 1, "timestamps": [[0.0, 1.0]]}}}},
}


def test_finegym_prepare_trims_resumes_and_reports(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="finegym.prepare")
    videos = tmp_path / "videos"
    videos.mkdir()
    write_index_video(videos / "vidA.mp4", 250, fps=25)  # 10 s
    (tmp_path / "ann.json").write_text(json.dumps(ANNOTATION))
    out = tmp_path / "finegym"
    args = ["--annotation", str(tmp_path / "ann.json"), "--videos", str(videos), "--out", str(out)]
    assert prepare.main(args) == 1  # vidMissing is reported
    assert "1 source videos missing (1 clips skipped), first: vidMissing" in caplog.text

    single = out / "subactions" / "vidA_E_000002_000006_A_0001_0002.mp4"
    indices = [read_index(f) for f in load_clip(single, count_frames(single), indices=range(count_frames(single)))]
    assert indices == list(range(75, 100))  # 3.0 s .. 4.0 s at 25 fps
    staged = out / "subactions" / "vidA_E_000002_000006_A_0000_0003.mp4"
    assert count_frames(staged) == 50  # vault: first start 2.5 s to last end 4.5 s
    assert not list((out / "subactions").glob("*.partial*"))

    before = single.stat().st_mtime_ns
    caplog.clear()
    prepare.main(args)
    assert single.stat().st_mtime_ns == before and "0 clips written, 2 already there" in caplog.text

    # the result loads as FineGym
    ann = out / "annotations"
    ann.mkdir()
    (ann / "gym99_categories.txt").write_text(
        "Clabel: 0; set: 1; Glabel: 1; (VT) a\nClabel: 1; set: 1; Glabel: 2; (VT) b\n")
    (ann / "gym99_val_element.txt").write_text(
        "vidA_E_000002_000006_A_0001_0002 0\nvidA_E_000002_000006_A_0000_0003 1\n")
    assert FineGym(out, "val", num_frames=8)[1][0].shape[0] == 8


def test_finegym_prepare_only_split_ids(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_index_video(videos / "vidA.mp4", 250)
    (tmp_path / "ann.json").write_text(json.dumps(ANNOTATION))
    (tmp_path / "split.txt").write_text("vidA_E_000002_000006_A_0001_0002 3\n")
    out = tmp_path / "o"
    assert prepare.main(["--annotation", str(tmp_path / "ann.json"), "--videos", str(videos), "--out", str(out),
                         "--only", str(tmp_path / "split.txt"), "--short-side", "24"]) == 0
    (clip,) = list((out / "subactions").iterdir())
    assert load_clip(clip, 1).shape[1] == 24


def test_haa500_layout_checker(tmp_path, capsys):
    for name in ["a class", "B-c"]:
        folder = tmp_path / "video" / name
        folder.mkdir(parents=True)
        for number in range(20):
            write_index_video(folder / f"{name}_{number:03d}.mp4", 3)
    assert check_layout.main([str(tmp_path), "--classes", "2"]) == 0
    (tmp_path / "video" / "B-c" / "B-c_007.mp4").unlink()
    (tmp_path / "video" / "B-c" / "wrong.mp4").write_bytes(b"")
    assert check_layout.main([str(tmp_path), "--classes", "2", "--decode"]) == 1
    out = capsys.readouterr().out
    assert "B-c: missing clip numbers [7]" in out and "wrong.mp4: not named 'B-c_<NNN>.mp4'" in out
    assert "clips shorter than 32 frames" in out
