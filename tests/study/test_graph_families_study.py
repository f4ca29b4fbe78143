"""benchmarks/studies/graph_families.yaml: the edge-family study, run tiny through the study runner."""
from pathlib import Path

import pytest
import yaml

from taggnn.study import LocalExecutor, load_spec, parse_spec, run_study

pytestmark = pytest.mark.slow  # whole studies: make test runs them as its second step

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "benchmarks" / "studies" / "graph_families.yaml"
TINY = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32", "data.synth_train=16",
        "data.synth_val=8", "data.synth_test=8", "train.batch_size=8", "train.eval_batch_size=8", "model.ffn_dim=32",
        "train.epochs=1", "train.deterministic=true", "train.device=cpu", "model.freeze_backbone=true"]


def test_the_graph_family_study_reads_and_runs_tiny(tmp_path):
    spec = load_spec(SPEC)  # every row's config checked as written
    assert spec.reference == "B+TE" and list(spec.rows) == [
        "B+TE", "Full", "grid8+aligned", "grid8+window2", "radius2+cube1", "knn8"]
    assert all(spec.row_config(row).model.readout == "attention" for row in spec.rows)
    graphs = {row: (c.model.graph_spatial if c.model.intra else "none",
                    c.model.graph_temporal if c.model.temporal else "none", c.model.graph_dynamic)
              for row, c in ((row, spec.row_config(row)) for row in spec.rows)}
    assert graphs == {"B+TE": ("none", "none", None), "Full": ("full", "aligned", None),
                      "grid8+aligned": ("grid8", "aligned", None), "grid8+window2": ("grid8", "window:2", None),
                      "radius2+cube1": ("radius:2", "cube:1", None), "knn8": ("none", "none", "knn:8")}

    values = yaml.safe_load(SPEC.read_text())
    values.update(base="synthgym_tiny", set=TINY + ["model.readout=attention"], seeds=1)
    tiny = parse_spec(yaml.safe_dump(values), source="tiny graph_families")
    with LocalExecutor(1, threads=1) as executor:
        records = run_study(tiny, tmp_path / "study", executor=executor, progress=False)
    assert sorted((r["row"], r["status"]) for r in records) == sorted((row, "done") for row in spec.rows)
    assert len(list((tmp_path / "study" / "features").iterdir())) == 1  # one backbone: extracted once
    config = (tmp_path / "study" / "runs" / "radius2+cube1" / "seed-0" / "config.yaml").read_text()
    assert "graph_spatial: radius:2" in config and "graph_temporal: cube:1" in config
    assert all(0 <= r["metrics"]["top1"] <= 100 for r in records)
