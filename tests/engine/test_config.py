import pytest

from taggnn.engine.config import Config, ConfigError, list_presets, load_config, valid_keys


def test_every_preset_loads():
    presets = list_presets()
    assert {"synthgym_tiny", "gym99_r2plus1d34", "gym288_r2plus1d34", "haa500_r2plus1d34",
            "gym99_authors", "gym288_authors", "haa500_authors", "gym99_i3d_r50"} <= set(presets)
    for name in presets:
        assert isinstance(load_config(name), Config)


def test_base_chain_and_paper_settings():
    gym288 = load_config("gym288_r2plus1d34")
    assert gym288.data.num_classes == 288 and gym288.model.ffn_dim == 1024  # the paper fixes 1024 (authors: 2048)
    assert gym288.data.num_frames == 64 and gym288.optim.lr == 1e-5 and gym288.model.norm_first
    authors = load_config("haa500_authors")
    assert authors.model.ffn_dim == 512 and not authors.model.norm_first and authors.model.dropout == 0.5
    assert authors.data.num_frames == 32 and authors.data.transform_style == "authors"
    assert authors.train.epochs == 80 and authors.train.seed == 42


def test_overrides_are_typed():
    config = load_config("synthgym_tiny", ["optim.lr=3e-4", "model.intra=false", "train.epochs=2",
                                           "model.backend=none", "data.synth_long_tail=10"])
    assert config.optim.lr == 3e-4 and config.model.intra is False and config.train.epochs == 2
    assert config.model.backend is None and config.data.synth_long_tail == 10.0


@pytest.mark.parametrize("override,message", [
    ("optim.learning_rate=1", r"unknown config key 'optim.learning_rate'; valid keys: .*optim\.lr"),
    ("model.K=two", "model.K expects an integer, got 'two'"),
    ("model.intra=maybe", "model.intra expects true/false"),
    ("model.propagation=sage", r"model.propagation must be one of appnp, gcn, gat, none"),
    ("train.epochs", "--set expects key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("synthgym_tiny", [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config 'nope'.*presets: .*synthgym_tiny"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'model.depth'"):
        load_config(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="chain loops"):
        load_config(str(loop))


def test_diff_names_what_differs():
    a, b = load_config("synthgym_tiny"), load_config("synthgym_tiny", ["model.K=5"])
    assert a.diff(b) == ["model.K: 2 -> 5"]
    assert "model.K" in valid_keys()
