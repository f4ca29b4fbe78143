"""Constants shared by the test modules: the tiny SynthGym run every training test starts from."""
from taggnn.engine import load_config

# A very small SynthGym run: 8 frames of 32x32, 48 training clips, batches of 8.
SMALL = ["data.num_frames=8", "data.crop_size=32", "data.short_side=32", "data.synth_size=32",
         "data.synth_train=48", "data.synth_val=16", "data.synth_test=16", "train.batch_size=8",
         "train.eval_batch_size=16", "model.ffn_dim=32", "train.epochs=2", "train.deterministic=true"]

# The same settings as command-line arguments: ``--set key=value`` pairs.
CLI_SMALL = [item for value in SMALL for item in ("--set", value)]


def small_config(*extra):
    """The ``synthgym_tiny`` configuration with :data:`SMALL` and then ``extra`` overrides applied."""
    return load_config("synthgym_tiny", SMALL + list(extra))
