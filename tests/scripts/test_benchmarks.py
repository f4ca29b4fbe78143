"""The benchmarks run end to end at tiny sizes (their figures come from full runs, see README)."""
import json

import pytest
import torch

from benchmarks import ablation, readout, training


def test_ablation_runs_the_study_files_with_paired_seeds(tmp_path):
    from taggnn.models import build_backbone

    weights = tmp_path / "backbone.pt"
    torch.save(build_backbone("r2plus1d_tiny").state_dict(), weights)
    small = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32",
             "data.synth_val=8", "train.batch_size=8", "model.ffn_dim=32"]
    out = tmp_path / "frozen.json"
    ablation.main(["--protocol", "frozen", "--train", "16", "--test", "8", "--epochs", "1", "--seeds", "2",
                   "--rows", "B", "B+TE", "Full+attention", "--pretrained", str(weights), "--out", str(out),
                   "--study", str(tmp_path / "study"), "--workers", "1", "--device", "cpu"]
                  + [a for item in small for a in ("--set", item)])
    result = json.loads(out.read_text())
    assert [r["row"] for r in result["table"]] == ["B", "B+TE", "Full+attention"]
    assert {(r["row"], r["seed"]) for r in result["runs"]} == {(row, s) for row in ("B", "B+TE", "Full+attention")
                                                               for s in (0, 1)}
    row = result["table"][2]
    assert row["summary_top1"]["n"] == 2 and row["diff_B"]["verdict"] in ("higher", "lower", "no difference")
    assert (tmp_path / "study" / "runs" / "Full+attention" / "seed-1" / "last.pt").is_file()


def test_tabulate_paired_differences():
    runs = [{"row": r, "seed": s, "top1": t, "mca": t, "seconds": 1.0}
            for r, values in (("B", [0.5, 0.6, 0.7]), ("B+TE", [0.6, 0.7, 0.8])) for s, t in enumerate(values)]
    table = ablation.tabulate(runs, ["B", "B+TE"], 3)
    difference = table[1]["diff_B"]
    assert abs(difference["mean"] - 10.0) < 1e-9 and difference["std"] < 1e-9


def test_training_step_benchmark_runs_every_path(tmp_path):
    out = tmp_path / "training.json"
    training.main(["--models", "demo", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == list(training.PATHS) and rows[0]["vs_default"] == 1.0


def test_readout_benchmark(tmp_path, monkeypatch):
    monkeypatch.setattr(readout, "PROPAGATIONS", {"APPNP K=2 (paper)": dict(propagation="appnp")})
    out = tmp_path / "readout.json"
    readout.main(["--no-latency", "--device", "cpu", "--pretrained", str(tmp_path / "none.pt"), "--out", str(out)])
    rows = {(r["readout"], r["post_graph"]): r["sensitivity_random"] for r in json.loads(out.read_text())["rows"]}
    assert rows[("mean", "none")] < 1e-3 and rows[("max", "none")] > 1e-2 and rows[("mean", "ffn")] > 1e-2


def test_tabulate_holm_adjusts_each_family():
    # B+TE+X is 0.1-0.9 points above B+TE on every seed: significant alone (p ~ 0.03), not
    # once the 3 comparisons with B+TE are adjusted for
    base = [0.50, 0.52, 0.48, 0.55, 0.51]
    rows = {"B": [b - 0.1 for b in base], "B+TE": base,
            "B+TE+X": [b + d for b, d in zip(base, [0.002, 0.009, 0.001, 0.008, 0.005])],
            "B+TE+Y": [b + d for b, d in zip(base, [0.01, -0.01, 0.0, 0.005, -0.005])]}
    runs = [{"row": r, "seed": s, "top1": t, "mca": t, "seconds": 1.0}
            for r, values in rows.items() for s, t in enumerate(values)]
    table = {entry["row"]: entry for entry in ablation.tabulate(runs, list(rows), 5)}
    x = table["B+TE+X"]
    assert x["vs B+TE"].endswith("higher") and x["diff_B+TE"]["p"] < 0.05
    assert x["diff_B+TE"]["p_holm"] > 0.05 and x["vs B+TE (Holm)"].startswith("no difference")
    assert table["B"]["vs B+TE (Holm)"].startswith("lower")  # 10 points below on every seed
    assert table["B+TE+Y"]["vs B+TE (Holm)"].startswith("no difference")
    assert "vs B+TE (Holm)" not in table["B+TE"]


def test_headonly_benchmark_times_cli_runs(tmp_path, capsys):
    from benchmarks import headonly
    from taggnn.cli import main as cli

    tiny = ["data.synth_train=16", "data.synth_val=8", "data.synth_test=8", "model.weights=null"]
    features = tmp_path / "features"
    assert cli(["features", "--config", "synthgym_frozen", "--out", str(features), "--no-progress"]
               + [a for item in tiny for a in ("--set", item)]) == 0
    out = tmp_path / "headonly.json"
    headonly.main(["--features", str(features), "--repeats", "1", "--variants", "default", "torch-dropout",
                   "--out", str(out)] + [a for item in tiny + ["train.epochs=1"] for a in ("--set", item)])
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == ["default", "torch-dropout"]
    for row in result["rows"]:  # one run each: its median is that run's own wall time
        assert row["runs"] == 1 and row["wall_s_median"] == result["runs"][row["variant"]][0]["wall_s"]
    assert result["runs"]["default"][0]["epochs"] == 1
    assert result["note"].startswith("test_top1: one seed's") and result["note"] in capsys.readouterr().out


def test_headonly_benchmark_refuses_a_folder_without_features(tmp_path):
    import pytest

    from benchmarks import headonly

    with pytest.raises(SystemExit, match="holds no cached features; write them with taggnn features"):
        headonly.main(["--features", str(tmp_path)])


def test_matrix_product_seconds_counts_products_only():
    from benchmarks.study_speed import matrix_product_seconds

    a = torch.randn(256, 256)
    assert matrix_product_seconds(lambda: [a.exp() + a for _ in range(20)]) == 0
    assert matrix_product_seconds(lambda: [a @ a for _ in range(20)]) > 0


def test_study_speed_benchmark_times_a_study_against_bare_runs(tmp_path):
    from benchmarks import study_speed

    small = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32",
             "data.synth_train=16", "data.synth_val=8", "data.synth_test=8", "train.batch_size=8",
             "train.eval_batch_size=8", "model.ffn_dim=32", "train.epochs=1", "train.device=cpu",
             "model.freeze_backbone=true"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"base: synthgym_tiny\nset: [{', '.join(small)}]\nseeds: 2\nreference: B\nrows: [B]\n"
                    f"head_only: true\nselect: last\n")
    result = study_speed.main([str(spec), "--out", str(tmp_path / "speed"), "--workers", "1", "--floor"])
    assert 0 < result["bare"]["B"]["products_s"] < result["bare"]["B"]["cpu_s"]
    assert result["products_s"] == pytest.approx(2 * result["bare"]["B"]["products_s"])
    assert result["floor_wall_s"] == pytest.approx(result["features_wall_s"] + result["products_s"])
    assert result["runs"] == 2 and set(result["run_cpu_s"]) == {"B/seed-0", "B/seed-1"}
    assert result["study_cpu_s"] > result["run_cpu_s"]["B/seed-0"] > 0
    assert result["features_cpu_s"] > 0 and set(result["bare"]) == {"B"}
    assert result["bare"]["B"]["cpu_s"] > 0 and result["overhead_cpu"] > -1
    assert result["compared"] == {"B": ["B/seed-1"]}  # the worker's first run (cold) is left out
    saved = json.loads((tmp_path / "speed" / "study_speed.json").read_text())
    assert saved["overhead_wall"] == result["overhead_wall"]
    assert (tmp_path / "speed" / "bare" / "row-0" / "metrics_test.json").is_file()
