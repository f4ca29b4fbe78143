"""The backbone-feature cache (`taggnn features`, `data.features=DIR`) as a checked artefact:
one fingerprint per folder, complete-or-absent splits, a lock, no foreign file overwritten,
finite values, and one-line errors for every way it can go wrong."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from taggnn.cli import main
from taggnn.engine import load_config, train

TINY = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32", "data.synth_train=32",
        "data.synth_val=16", "data.synth_test=16", "train.batch_size=8", "train.eval_batch_size=16",
        "model.ffn_dim=32", "train.epochs=1", "train.deterministic=true", "model.weights=null"]


def sets(values):
    return [item for value in values for item in ("--set", value)]


def features(out, *args, extra=(), config="synthgym_frozen"):
    return main(["features", "--config", config, *sets(TINY + list(extra)), "--out", str(out), "--no-progress",
                 "--device", "cpu", *args])


def train_on(folder, *extra, out=None):
    return main(["train", "--config", "synthgym_frozen", *sets(TINY + [f"data.features={folder}", *extra]),
                 "--out", str(out or folder.parent / f"run_{folder.name}"), "--no-progress"])


def assert_usable(folder, *extra):
    """Every split loads under the config, and the head sized from the folder's info.json
    takes its features (what a head-only run does first)."""
    from taggnn.engine.data import build_dataset
    from taggnn.models import build_model_from_config

    config = load_config("synthgym_frozen", TINY + [f"data.features={folder}", *extra])
    model = build_model_from_config(config, 16).eval()
    for split in ("train", "val", "test"):
        dataset = build_dataset(config, split, train=False)
        assert model(torch.stack([dataset[i][0] for i in range(2)])).shape == (2, 16)


def one_line_error(capsys, command="features"):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"taggnn {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A complete folder (train, val, test) from a seeded random backbone."""
    out = tmp_path_factory.mktemp("cache") / "features"
    assert features(out) == 0
    return out


@pytest.fixture
def folder(cache, tmp_path):
    copy = tmp_path / "features"
    shutil.copytree(cache, copy)
    return copy


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A tiny model trained on videos (backbone + head), for --checkpoint."""
    out = tmp_path_factory.mktemp("full")
    train(load_config("synthgym_tiny", TINY), out, progress=False)
    return out / "best.pt"


# ---------------------------------------------------------------- one fingerprint per folder


def test_a_split_of_another_backbone_is_not_added(folder, capsys):
    before = (folder / "test.pt").read_bytes()
    capsys.readouterr()
    assert features(folder, "--split", "test", extra=["train.seed=3"]) == 2  # another random backbone
    line = one_line_error(capsys)
    assert "another backbone or settings" in line and "backbone weights (sha256)" in line and "(folder) vs" in line
    assert (folder / "test.pt").read_bytes() == before


def test_training_refuses_a_folder_mixing_backbones(folder, tmp_path, capsys):
    other = tmp_path / "other"
    assert features(other, "--split", "test", extra=["train.seed=3"]) == 0
    shutil.copy(other / "test.pt", folder / "test.pt")  # a split of another backbone, dropped in by hand
    capsys.readouterr()
    assert train_on(folder) == 2
    line = one_line_error(capsys, "train")
    assert "test.pt was made with another backbone or settings" in line and "backbone weights (sha256)" in line


def test_model_weights_is_a_checked_setting(cache, tmp_path, capsys):
    weights = tmp_path / "backbone.pt"
    torch.save({"stem.0.weight": torch.zeros(1)}, weights)  # never read: refused before
    capsys.readouterr()
    assert train_on(cache, f"model.weights={weights}", out=tmp_path / "run") == 2
    line = one_line_error(capsys, "train")
    assert f"model.weights: None (features) vs '{weights}' (config)" in line


# ---------------------------------------------------------------- complete or absent; one writer


def test_an_interrupted_run_with_other_settings_leaves_the_folder_intact(folder, monkeypatch, capsys):
    grid = json.loads((folder / "info.json").read_text())["grid"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    assert features(folder, extra=["data.num_frames=16"]) in (2, 130)
    monkeypatch.undo()
    assert json.loads((folder / "info.json").read_text())["grid"] == grid
    assert sorted(p.name for p in folder.iterdir()) == ["info.json", "test.pt", "train.pt", "val.pt"]
    assert_usable(folder)  # the 8-frame features, with the head sized for them


KILL_AT_SAVE = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second split is half written when the process is killed
        calls.append(1)
        if len(calls) < 2:
            return real(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real(obj, buffer)
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as g:
                g.write(data)
        else:
            f.write(data)
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
    from taggnn.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_killed_run_leaves_only_complete_splits_and_resumes(tmp_path, capsys):
    out = tmp_path / "features"
    command = [sys.executable, "-c", KILL_AT_SAVE, "features", "--config", "synthgym_frozen", *sets(TINY),
               "--out", str(out), "--no-progress", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    train_inode = (out / "train.pt").stat().st_ino
    # training on the folder: one line naming the split that never completed
    assert train_on(out) == 2
    line = one_line_error(capsys, "train")
    assert "no cached features for split 'val'" in line and "complete splits: train" in line
    # running again takes over the dead process's lock, removes its temporary file and writes
    # only what is missing
    assert features(out) == 0
    assert (out / "train.pt").stat().st_ino == train_inode
    assert sorted(p.name for p in out.iterdir()) == ["info.json", "test.pt", "train.pt", "val.pt"]
    assert_usable(out)


def _lock_text(pid, start, host=None):
    return f"{pid} {start} {host or socket.gethostname()}"


def _start_time(pid):  # field 22 of /proc/<pid>/stat
    stat = open(f"/proc/{pid}/stat").read()
    return stat[stat.rfind(")") + 2:].split()[19]


def test_a_live_lock_refuses_a_second_writer_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "features"
    out.mkdir()
    lock = out / ".taggnn-features.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(_lock_text(holder.pid, _start_time(holder.pid)))
        assert features(out, "--split", "val") == 2
        line = one_line_error(capsys)
        assert f"in use by another taggnn process (process {holder.pid}" in line and not (out / "val.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    (out / f".{lock.name}.{holder.pid}.tmp").write_text("")  # the lock's temporary file, left by a killed writer
    assert features(out, "--split", "val") == 0  # its process has ended: stale
    assert (out / "val.pt").is_file() and not lock.exists()
    # a PID now used by another process (another start time) is stale too
    lock.write_text(_lock_text(os.getpid(), "1"))
    assert features(out, "--split", "test") == 0 and not lock.exists()


def test_the_lock_file_is_exclusive_and_released(tmp_path):
    from taggnn.utils.lockfile import LockFile

    path = tmp_path / "x.lock"
    with LockFile(path) as held:
        assert path.read_text() == held.text and json.loads(held.text)["pid"] == os.getpid()
        with pytest.raises(RuntimeError, match="in use by another taggnn process"):
            LockFile(path).__enter__()
    assert not path.exists()


# ---------------------------------------------------------------- only its own files


@pytest.mark.parametrize("names", [["train.pt", "info.json"], ["notes.txt"]])
def test_a_folder_holding_other_files_is_refused(tmp_path, capsys, names):
    out = tmp_path / "mine"
    out.mkdir()
    for name in names:
        (out / name).write_text(f"the user's {name}")
    assert features(out, "--split", "val") == 2
    line = one_line_error(capsys)
    assert "holds files taggnn features did not write" in line and names[0] in line
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert all((out / name).read_text() == f"the user's {name}" for name in names)


def test_a_complete_split_is_kept_not_written_again(folder, caplog):
    before = (folder / "test.pt").stat()
    with caplog.at_level("INFO", logger="taggnn"):
        assert features(folder, "--split", "test") == 0
    after = (folder / "test.pt").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "split 'test' is already in" in caplog.text and "not written again" in caplog.text


# ---------------------------------------------------------------- finite values, failures in one line


def test_float16_overflow_is_refused_and_float32_stores_it(tmp_path, capsys):
    from taggnn.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("r2plus1d_tiny")
    with torch.no_grad():
        backbone.layer4.conv2[1].bias.fill_(1e5)  # every output above float16's 65504
    weights = tmp_path / "loud.pt"
    torch.save(backbone.state_dict(), weights)
    out = tmp_path / "features"
    assert features(out, "--split", "val", extra=[f"model.weights={weights}"]) == 2
    line = one_line_error(capsys)
    assert "beyond the range of torch.float16" in line and "--float32" in line
    assert not (out / "val.pt").exists() and not (out / "info.json").exists()
    assert features(out, "--split", "val", "--float32", extra=[f"model.weights={weights}"]) == 0
    stored = torch.load(out / "val.pt", weights_only=True)["features"]
    assert stored.dtype == torch.float32 and torch.isfinite(stored).all() and stored.min() > 9e4


def test_a_split_of_unreadable_videos_is_one_line(tmp_path, capsys):
    root = tmp_path / "videos"
    for name in ("a/x.mp4", "b/y.mp4"):
        (root / "train" / name).parent.mkdir(parents=True)
        (root / "train" / name).write_bytes(b"not a video")
    out = tmp_path / "features"
    assert features(out, "--split", "train", extra=["data.dataset=folder", f"data.root={root}",
                                                   "data.on_error=skip", "data.num_classes=2"]) == 2
    line = one_line_error(capsys)
    assert "x.mp4" in line and "every other clip of split 'train' (2 in all) are unreadable" in line
    assert not (out / "train.pt").exists() and not (out / "info.json").exists()


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # torch on /dev/full
])
def test_a_full_disk_leaves_nothing_half_written(folder, tmp_path, monkeypatch, capsys, error):
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real({"half": torch.zeros(1000)}, f)  # some bytes reach the file, then the disk is full
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "fresh"
    assert features(out, "--split", "val") == 2
    assert sorted(p.name for p in out.iterdir()) == []
    line = one_line_error(capsys)
    assert "could not write" in line and "val.pt" in line and "nothing half-written was kept" in line
    if isinstance(error, OSError):
        assert "no space left on device" in line
    # adding a split to a complete folder: its complete splits are intact and still train
    before = sorted(p.name for p in folder.iterdir())
    (folder / "test.pt").unlink()
    info = json.loads((folder / "info.json").read_text())
    del info["splits"]["test"]
    (folder / "info.json").write_text(json.dumps(info))
    assert features(folder, "--split", "test") == 2
    one_line_error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(before) - {"test.pt"})


# ---------------------------------------------------------------- features from a checkpoint


def test_a_checkpoint_gives_features_at_another_clip_length(full_run, tmp_path):
    from taggnn.engine.data import build_dataset
    from taggnn.engine.trainer import load_trained

    out = tmp_path / "features"
    assert features(out, "--split", "val", "--checkpoint", str(full_run), "--float32",
                    extra=["data.num_frames=16"], config="synthgym_tiny") == 0
    stored = torch.load(out / "val.pt", weights_only=True)
    model, _, _ = load_trained(full_run, torch.device("cpu"))
    assert tuple(stored["features"].shape[2:]) == model.backbone.feature_grid(16, 32, 32) == (4, 2, 2)
    clip, _ = build_dataset(load_config("synthgym_tiny", TINY + ["data.num_frames=16"]), "val", train=False)[0]
    with torch.no_grad():
        torch.testing.assert_close(stored["features"][0], model.backbone(clip.unsqueeze(0))[0])
    info = json.loads((out / "info.json").read_text())
    assert info["from_checkpoint"] and info["backbone_source"].startswith(f"checkpoint {full_run}")


def test_a_checkpoint_of_another_backbone_is_one_line(full_run, tmp_path, capsys):
    assert features(tmp_path / "f", "--checkpoint", str(full_run), extra=["model.backbone=r3d_18"],
                    config="synthgym_tiny") == 2
    line = one_line_error(capsys)
    assert "holds a 'r2plus1d_tiny' backbone, but the config says model.backbone='r3d_18'" in line
    assert "--set model.backbone=r2plus1d_tiny" in line


def test_a_head_only_checkpoint_has_no_backbone(cache, tmp_path, capsys):
    from taggnn.engine.checkpoint import save_checkpoint
    from taggnn.models import build_model_from_config

    config = load_config("synthgym_frozen", TINY + [f"data.features={cache}"])  # what a head-only run saves
    head_only = save_checkpoint(tmp_path / "best.pt", {"model": build_model_from_config(config, 16).state_dict(),
                                                       "config": config.to_dict(), "num_classes": 16, "epoch": 1})
    assert features(tmp_path / "f", "--checkpoint", str(head_only)) == 2
    assert "is a head trained on cached features" in one_line_error(capsys)


def test_export_of_a_head_only_checkpoint_refuses_frames_and_crop(cache, tmp_path, capsys):
    """A head on cached features takes backbone features, whose grid --frames / --crop cannot change:
    refused in one line (they were ignored, and the export kept the trained grid), nothing written."""
    from taggnn.engine.checkpoint import save_checkpoint
    from taggnn.models import build_model_from_config

    config = load_config("synthgym_frozen", TINY + [f"data.features={cache}"])
    head_only = save_checkpoint(tmp_path / "best.pt", {"model": build_model_from_config(config, 16).state_dict(),
                                                       "config": config.to_dict(), "num_classes": 16, "epoch": 1})
    for option in (["--frames", "16"], ["--crop", "64"]):
        assert main(["export", "--checkpoint", str(head_only), "--format", "torchscript", *option]) == 2
        line = one_line_error(capsys, "export")
        assert "--frames/--crop do not apply" in line and "cached features" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    assert main(["export", "--checkpoint", str(head_only), "--format", "torchscript"]) == 0
    assert "input (batch, " in capsys.readouterr().out


# ---------------------------------------------------------------- files that are not feature files


class Crafted:
    def __reduce__(self):
        return (print, ("a crafted pickle ran code",))


def test_a_crafted_pickle_in_the_folder_is_one_line(folder, capsys):
    torch.save({"features": Crafted()}, folder / "val.pt")
    assert train_on(folder) == 2
    captured = capsys.readouterr()
    assert "a crafted pickle ran code" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("taggnn train: error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert "val.pt is not a taggnn feature file" in lines[0] and "pickled Python objects" in lines[0]


def test_a_broken_manifest_is_one_line(folder, capsys):
    (folder / "info.json").write_text("{not json")
    assert train_on(folder) == 2
    assert "info.json is not a taggnn features manifest" in one_line_error(capsys, "train")
