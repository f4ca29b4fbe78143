"""Study files: checked before any run, with one-line errors naming the key."""
import pytest

from benchmarks import paper
from taggnn.cli import main
from taggnn.errors import ConfigError
from taggnn.study.rows import ALIASES, ROWS, TABLE4, canonical_row, is_plain_name, row_slug
from taggnn.study.spec import parse_spec

BASE = "base: synthgym_tiny\nset: [model.ffn_dim=32]\n"


def test_table4_rows_live_in_one_place():
    assert paper.TABLE4_ROWS is TABLE4
    assert list(TABLE4) == ["B", "B+TE", "B+TE+IF-FC", "B+TE+TAT", "Full"]
    for name in ROWS:  # every row has a name usable unquoted on a command line
        assert is_plain_name(row_slug(name))
        assert canonical_row(row_slug(name)) == name
    assert canonical_row("Full-LS0") == "Full (LS=0)" and set(ALIASES.values()) <= set(ROWS)


def test_a_study_builds_every_rows_config():
    spec = parse_spec(BASE + "seeds: 3\nreference: B+TE\nrows: table4\nextra_rows:\n  Full+max: [model.readout=max]\n"
                      "metric: mca\nselect: best\n")
    assert list(spec.rows) == [*TABLE4, "Full+max"] and spec.seeds == [0, 1, 2]
    b = spec.row_config("B", seed=2)
    assert (b.model.use_transformer, b.model.intra, b.train.seed, b.data.seed, b.model.ffn_dim) == (False, False, 2, 0,
                                                                                                     32)
    assert spec.row_config("Full+max").model.readout == "max"
    assert spec.describe()["rows"][0] == "B" and spec.describe()["metric"] == "mca"


def test_an_extra_row_may_repeat_a_built_in_rows_definition():
    spec = parse_spec(BASE + "rows: [B+TE]\nextra_rows:\n  Full-LS0: [model.layer_scale=0]\n  Full+max: "
                             "[model.readout=max]\n")
    assert spec.row_config("Full-LS0").model.layer_scale == 0 and spec.row_config("Full+max").model.readout == "max"


def test_aliases_and_seed_lists():
    spec = parse_spec(BASE + "seeds: [4, 7]\nrows: [B+TE, Full-LS0]\nreference: Full-LS0\n")
    assert list(spec.rows) == ["B+TE", "Full (LS=0)"] and spec.reference == "Full (LS=0)"
    assert spec.seeds == [4, 7] and spec.slug("Full (LS=0)") == "Full-LS0"


@pytest.mark.parametrize("text, expected", [
    (BASE + "rows: table4\nepochs: 3\n", "unknown key 'epochs'"),
    (BASE + "rows: [B, Fulll]\n", "unknown row 'Fulll'"),
    (BASE + "rows: table4\nextra_rows:\n  X: [model.readuot=max]\n", "model.readuot"),
    (BASE + "rows: table4\nextra_rows:\n  X: [model.dropout=2.0]\n", "model.dropout"),
    (BASE + "rows: table4\nextra_rows:\n  'a b': [model.readout=max]\n", "'a b'"),
    (BASE + "rows: table4\nreference: Full+max\n", "reference 'Full+max'"),
    (BASE + "rows: table4\nmetric: top3\n", "metric"),
    (BASE + "rows: table4\nselect: first\n", "select"),
    (BASE + "rows: table4\nseeds: 0\n", "seeds"),
    ("base: nosuchpreset\nrows: table4\n", "nosuchpreset"),
    ("base: synthgym_tiny\nset: [train.epochs=-1]\nrows: table4\n", "train.epochs"),
    (BASE + "rows: [B]\nextra_rows:\n  Full+max: [model.readout=mean]\n",
     "extra_rows: 'Full+max' is the name of a built-in row (model.readout=max) but is defined otherwise here"),
    (BASE + "rows: [B]\nextra_rows:\n  Full-LS0: [model.layer_scale=0.5]\n", "model.layer_scale=0.5"),
])
def test_bad_study_files_are_refused_naming_the_key(text, expected):
    with pytest.raises(ConfigError) as error:
        parse_spec(text, source="s.yaml")
    assert expected in str(error.value)


def test_the_cli_refuses_a_bad_study_in_one_line_before_any_run(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE + "rows: table4\nextra_rows:\n  X: [model.num_heads=0]\n")
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "row X" in err and "model.num_heads" in err
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("rows, twice", [("[B, B+TE, B]", "'B'"), ("[Full-LS0, 'Full (LS=0)']", "'Full (LS=0)'")])
def test_a_row_listed_twice_is_refused(rows, twice):
    """A row named twice (or by its name and its alias) is a mistake in the file, not one row."""
    with pytest.raises(ConfigError) as error:
        parse_spec(BASE + f"rows: {rows}\n", source="s.yaml")
    assert str(error.value).startswith("s.yaml: rows lists the row") and twice in str(error.value)


def test_row_errors_name_the_file_and_the_row_once():
    with pytest.raises(ConfigError) as error:
        parse_spec(BASE + "rows: [B, Fulll]\n", source="s.yaml")
    assert str(error.value).startswith("s.yaml: rows: unknown row 'Fulll'")
    with pytest.raises(ConfigError) as error:
        parse_spec(BASE + "rows: [B]\nextra_rows:\n  X: [model.readuot=max]\n", source="s.yaml")
    assert str(error.value).startswith("s.yaml: row X: unknown config key 'model.readuot'")
    assert str(error.value).count("row X") == 1


@pytest.mark.parametrize("rows, extra, other", [
    ("[B, Full-LS0]", "Full-LS0: [model.layer_scale=0]", "'Full (LS=0)'"),  # a row by alias, then its folder name
    ("[B, Full]", "full: [model.readout=max]", "'Full'"),  # runs/full is runs/Full on macOS and Windows
])
def test_an_extra_row_that_would_share_a_rows_folder_is_refused(rows, extra, other):
    """Two rows in one run folder would report the same runs twice (and mix them where they differ)."""
    with pytest.raises(ConfigError) as error:
        parse_spec(BASE + f"rows: {rows}\nextra_rows:\n  {extra}\n", source="s.yaml")
    assert str(error.value).startswith(f"s.yaml: extra_rows: row '{extra.split(':')[0]}' would share the run folder")
    assert other in str(error.value)
