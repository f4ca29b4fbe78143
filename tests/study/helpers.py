"""The tiny study the study tests share: SynthGym, a tiny backbone, head-only, a few clips."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SMALL = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32", "data.synth_train=32",
         "data.synth_val=8", "data.synth_test=8", "train.batch_size=8", "train.eval_batch_size=16",
         "model.ffn_dim=32", "train.epochs=3", "train.deterministic=true", "train.checkpoint_every_steps=2",
         "train.device=cpu", "model.freeze_backbone=true"]
ROOT = Path(__file__).resolve().parents[2]


def spec_text(rows="[B, B+TE]", seeds="2", extra="", reference="B+TE"):
    """A study file of the tiny study (by default: rows B and B+TE, seeds 0 and 1)."""
    return (f"base: synthgym_tiny\nset: [{', '.join(SMALL)}]\nseeds: {seeds}\nreference: {reference}\nrows: {rows}\n"
            f"head_only: true\nselect: last\n{extra}")


def metrics(records):
    """(row, seed) -> metrics of a study's records."""
    return {(r["row"], r["seed"]): r["metrics"] for r in records}


def copy_study(source: Path, out: Path, *, runs: bool = True) -> Path:
    """A copy of the study folder ``source`` at ``out``; ``runs=False`` keeps only its study file
    and cached features (every run then starts from scratch, without extracting features again)."""
    if runs:
        shutil.copytree(source, out)
    else:
        shutil.copytree(source, out, ignore=lambda folder, names: [n for n in names if n in (
            "runs", "state.json", "records.json") and Path(folder) == Path(source)])
    return out


def start_driver(spec, out, *extra):
    """``taggnn study run SPEC --out OUT`` (one worker, one thread) in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "taggnn", "study", "run", str(spec), "--out", str(out),
                             "--workers", "1", "--threads", "1", "--no-progress", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(folder: Path, process) -> int:
    """The PID holding the run folder's lock once its first last.pt is written."""
    while not (folder / "last.pt").is_file():
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    return json.loads((folder / ".taggnn.lock").read_text())["pid"]
