"""benchmarks.oversmoothing and benchmarks.readout on other edge families (quick runs)."""
import json

import pytest

from benchmarks import oversmoothing, readout
from taggnn.errors import ConfigError


def test_oversmoothing_benchmark_on_edge_families(tmp_path, monkeypatch):
    monkeypatch.setattr(oversmoothing, "GRIDS", [(2, 4, 4)])
    monkeypatch.setattr(oversmoothing, "DEPTHS", [1, 2])
    out = tmp_path / "oversmoothing.json"
    oversmoothing.main(["--no-latency", "--device", "cpu", "--channels", "8", "--batch", "1", "--graphs",
                        "full+aligned", "grid8+window:2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["settings"]["backends"] == {"full+aligned": "structured", "grid8+window:2": "stencil"}
    rows = {(r["graph"], r["operator"], r["mode"], r["depth"]): r for r in result["rows"]}
    assert {graph for graph, *_ in rows} == {"full+aligned", "grid8+window:2"}
    # one propagation-only GCN step: the clique collapses each frame, the 8-neighbourhood only smooths it
    assert rows[("full+aligned", "gcn", "propagation", 1)]["energy_within_ratio"] < 1e-2
    assert 0.01 < rows[("grid8+window:2", "gcn", "propagation", 1)]["energy_within_ratio"] < 0.5
    with pytest.raises(ConfigError, match="the spatial family of --graphs 'grid9\\+aligned' must be one of"):
        oversmoothing.main(["--graphs", "grid9+aligned", "--out", str(out)])


def test_readout_benchmark_on_edge_families(tmp_path, monkeypatch):
    monkeypatch.setattr(readout, "PROPAGATIONS", {"APPNP K=2 (paper)": dict(propagation="appnp")})
    out = tmp_path / "readout.json"
    readout.main(["--no-latency", "--device", "cpu", "--pretrained", str(tmp_path / "none.pt"), "--out", str(out),
                  "--graphs", "grid8+window:2", "grid4+aligned+knn:4", "--readouts", "mean", "attention",
                  "--clips", "2"])
    rows = {(r["graph"], r["readout"], r["post_graph"]): r["sensitivity_random"]
            for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 2 * 2 * 2
    for graph in ("grid8+window:2", "grid4+aligned+knn:4"):
        assert rows[(graph, "attention", "none")] > 1e-2 and rows[(graph, "mean", "ffn")] > 1e-2
