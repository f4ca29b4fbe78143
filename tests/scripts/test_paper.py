from benchmarks import paper


def test_dry_run_prints_a_command_for_every_table_and_figure(capsys):
    assert paper.main(["--table", "all", "--dry-run", "--data-root", "/data"]) == 0
    out = capsys.readouterr().out
    for marker in ("# Table 1, gym99", "# Table 1, gym288", "# Table 1, haa500", "# Table 2, gym99: FFN width 256",
                   "# Table 2, haa500: FFN width 2048", "# Table 3, gym99: i3d_r50 without head",
                   "# Table 3, haa500: csn_r101 + TAG-Head", "# Table 4, haa500: B+TE+TAT", "# Table 4, gym288: Full",
                   "# Table 5", "# Figure 3 (a) transfer learning", "# Figure 3: t-SNE"):
        assert marker in out, marker
    assert "--set data.num_frames=32 --set model.ffn_dim=2048" in out
    assert "--set data.root=/data/haa500" in out and "--set data.root=/data/finegym" in out
    commands = [line for line in out.splitlines() if line.startswith("taggnn ")]
    assert len(commands) == 3 + 8 + 12 + 10 + 1 + 4


def test_one_dataset_of_table_4(capsys):
    assert paper.main(["--table", "4", "--dataset", "haa500", "--dry-run", "--data-root", "/d"]) == 0
    out = capsys.readouterr().out
    assert out.count("taggnn train") == 5 and "gym288" not in out and "--set data.root=/d " in out + " "


def test_the_table_5_command_gives_the_papers_counts(capsys):
    from taggnn.cli import main

    command = paper.commands("5", "all", "/d", "runs")[0][1].split()[1:]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "63,491,975" in out and "6,405,120" in out and "69,897,095" in out
