"""The README's "Train on your own videos" commands, run as printed on tiny datasets this test writes.

The commands are read from README.md itself (the fenced block under the heading), so the README
cannot drift from what works. The only changes made to a command: ``--out`` and ``--no-progress``
are added, and keys the command does not set are added to keep the run tiny (one epoch of 4-frame
clips); a catalogue weights name (a download) is replaced by a local weights file when the block
documents that form, since these machines have no network.
"""
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from taggnn.cli import main

from .data.helpers import write_index_video

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "### Train on your own videos"
SMALL = {"train.epochs": "1", "data.num_frames": "2", "train.batch_size": "2", "train.eval_batch_size": "2"}
CLASSES = ("jump", "spin")


def readme_block(heading: str = HEADING) -> str:
    """The first fenced block after ``heading`` in README.md."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.search(r"^```[^\n]*\n(.*?)^```", text[start:], re.S | re.M)
    assert match, f"no fenced block under {heading!r} in {README}"
    return match.group(1)


def readme_commands(block: str):
    """Every ``taggnn`` command of ``block`` as an argument list (continuation lines joined,
    comments dropped); a command with ``[optional arguments]`` gives one list without them and
    one with them."""
    commands, current = [], ""
    for line in block.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not current):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            commands.append(current.strip())
            current = ""
    variants = []
    for command in commands:
        optional = re.findall(r"\[([^\]]*)\]", command)
        plain = re.sub(r"\s*\[[^\]]*\]", "", command)
        variants.append(shlex.split(plain))
        if optional:
            variants.append(shlex.split(plain) + [arg for part in optional for arg in shlex.split(part)])
    return variants


def set_keys(argv):
    return {argv[i + 1].split("=", 1)[0] for i, arg in enumerate(argv[:-1]) if arg == "--set"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/my/<split>/<class>/*.mp4, and videos/ with train/val/test.csv in both CSV layouts."""
    root = tmp_path_factory.mktemp("own_videos")
    rows = {split: [] for split in ("train", "val", "test")}
    for split in rows:
        for label, name in enumerate(CLASSES):
            for copy in range(1):
                file_name = f"{split}_{name}_{copy}.mp4"
                folder = root / "data" / "my" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                write_index_video(folder / file_name, 12, height=32, width=80)
                for target in (root / "videos" / file_name, root / "videos" / name / file_name):  # flat, authors
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes((folder / file_name).read_bytes())
                rows[split].append(f"{file_name},{name},12,{label}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("FileName,Class,TotalFrames,ClassEncoded\n" + "\n".join(lines) + "\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # ~1 GB of weights and runs: CI's disk is not ours to fill


def local_weights(argv, block: str, workspace: Path):
    """``argv`` with a catalogue weights name replaced by a local file of that backbone's weights
    (only when the README block shows that ``model.weights`` takes a local file)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if not arg.startswith("model.weights="):
            continue
        value = arg.split("=", 1)[1]
        if "/" in value or "." in value or value.lower() in ("none", "null"):
            continue  # already a path, a URL or no weights
        assert re.search(r"model\.weights=\S*/", block), (
            f"the README command downloads {value!r}; document the local-file form of model.weights in the "
            f"same block (e.g. --set model.weights=/path/to/file.pth) or use model.weights=none")
        from taggnn.models import build_backbone

        backbone = [a.split("=", 1)[1] for a in out if a.startswith("model.backbone=")][0]
        path = workspace / f"{backbone}_local_weights.pth"
        if not path.exists():
            torch.manual_seed(0)
            torch.save(build_backbone(backbone).state_dict(), path)
        out[i] = f"model.weights={path}"
    return out


def test_the_readme_block_has_the_folder_and_csv_commands():
    commands = readme_commands(readme_block())
    datasets = {arg.split("=", 1)[1] for argv in commands for arg in argv if arg.startswith("data.dataset=")}
    assert {"folder", "csv"} <= datasets
    assert all(argv[:2] == ["taggnn", "train"] for argv in commands)


@pytest.mark.parametrize("which", range(3))
def test_the_readme_own_videos_commands_train_and_test(which, workspace, monkeypatch, capsys):
    block = readme_block()
    commands = readme_commands(block)
    if which >= len(commands):
        pytest.skip(f"the README block has {len(commands)} command variants")
    argv = commands[which]
    assert not set(SMALL) & set_keys(argv), "the test would override a key the README sets"
    monkeypatch.chdir(workspace)
    from taggnn.engine.config import ConfigError, load_config

    overrides = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--set"]
    preset = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"), "synthgym_tiny")
    try:  # the command as printed, weights name included, is a valid configuration
        load_config(preset, overrides)
    except ConfigError as error:
        pytest.fail(f"{shlex.join(argv)}: {error}")
    argv = local_weights(argv, block, workspace)
    out = workspace / "runs" / f"readme_{which}"
    small = [item for key, value in SMALL.items() for item in ("--set", f"{key}={value}")]
    code = main(argv[1:] + ["--out", str(out), "--no-progress", *small])
    captured = capsys.readouterr()
    assert code == 0, f"{shlex.join(commands[which])}\n{captured.err}"
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert metrics["count"] == len(CLASSES) and metrics["skipped"] == 0
    assert "test top-1" in captured.out
