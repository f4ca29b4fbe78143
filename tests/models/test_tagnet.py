import pytest
import torch

from taggnn.models import TAGNet, build_model, convert_reference_state_dict, load_reference_checkpoint, reference_model
from taggnn.models.weights import WeightsError
from taggnn.nn import TAGHead


def tiny_model(**kwargs):
    torch.manual_seed(0)
    return build_model("r2plus1d_tiny", 7, num_frames=16, crop_size=64, num_heads=4, ffn_dim=64, **kwargs)


def test_build_model_sizes_the_head_from_the_backbone():
    model = tiny_model()
    assert model.head.grid == (4, 4, 4) and model.head.in_channels == 128
    video = torch.randn(2, 3, 16, 64, 64)
    assert model(video).shape == (2, 7)
    assert model.forward_pooled(video).shape == (2, 128)
    assert model.forward_backbone(video).shape == (2, 128, 4, 4, 4)


def test_forward_pooled_is_what_classify_classifies_and_the_timm_names_are_deprecated():
    from taggnn.models.tagnet import build_head_only

    model = tiny_model().eval()
    video = torch.randn(2, 3, 16, 64, 64)
    pooled = model.forward_pooled(video)
    torch.testing.assert_close(model.classify(pooled), model(video))
    features = model.forward_backbone(video)
    tokens = model.head.forward_nodes(features)  # what timm's forward_features returns: before pooling
    assert tokens.shape == (2, 64, 128)
    torch.testing.assert_close(pooled, tokens.mean(1))  # the paper's head: mean readout of the nodes
    head_only = build_head_only(128, 7, (4, 4, 4), num_heads=4, ffn_dim=64).eval()
    for owner, name, inputs in ((model, "TAGNet", video), (model.head, "TAGHead", features),
                                (head_only, "HeadOnly", features)):
        with pytest.warns(FutureWarning, match=rf"{name}\.forward_features is deprecated.*forward_pooled"):
            old = owner.forward_features(inputs)
        torch.testing.assert_close(old, owner.forward_pooled(inputs))
        pooled = owner.forward_pooled(inputs)
        with pytest.warns(FutureWarning, match=r"forward_head is deprecated.*classify"):
            torch.testing.assert_close(owner.forward_head(pooled), owner.classify(pooled))


def test_frozen_backbone_gets_no_gradients_and_stays_in_eval():
    model = tiny_model(freeze_backbone=True)
    model.train()
    assert not model.backbone.training and model.head.training
    model(torch.randn(2, 3, 16, 64, 64)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    model.freeze_backbone(False)
    model.train()
    assert model.backbone.training
    model(torch.randn(2, 3, 16, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_mismatched_head_is_rejected():
    from taggnn.models import build_backbone

    with pytest.raises(ValueError, match=r"head.in_channels \(64\) must equal backbone.out_channels \(128\)"):
        TAGNet(build_backbone("r2plus1d_tiny"), TAGHead(64, 3, (4, 4, 4)))


def authors_state_dict(model, prefix_backbone="backbone", prefix_head="classifier"):
    """A state dict laid out like the authors' released checkpoints, from a taggnn model."""
    state = {}
    stages = ["stem", "layer1", "layer2", "layer3", "layer4"]
    for key, value in model.state_dict().items():
        value = torch.randn_like(value) if value.is_floating_point() else value
        if key.startswith("backbone."):
            stage, rest = key[len("backbone."):].split(".", 1)
            state[f"{prefix_backbone}.{stages.index(stage)}.{rest}"] = value
        elif key == "head.pos_embed.weight":
            state["pos_embedding"] = value.reshape(1, -1, value.shape[-1])
        elif key.startswith("head.transformer."):
            state[key[len("head."):]] = value
        elif key.startswith("head.norm."):
            state[f"{prefix_head}.0.{key[len('head.norm.'):]}"] = value
        elif key.startswith("head.classifier."):
            state[f"{prefix_head}.1.{key[len('head.classifier.'):]}"] = value
        else:
            raise AssertionError(key)
    return state


@pytest.mark.parametrize("names", [("backbone", "classifier"), ("csnmodel", "mlp_head")])
def test_reference_checkpoint_round_trip(tmp_path, names):
    model = reference_model("haa500")
    head = model.head
    assert not head.transformer.norm_first and head.norm is not None
    assert head.transformer.ffn_dim == 512 and head.grid == (4, 7, 7) and head.num_classes == 500
    assert head.refiner.K == 2 and head.refiner.alpha == 0.1
    state = authors_state_dict(model, *names)
    path = tmp_path / "haa500_best.pth"
    torch.save(state, path)
    loaded, setup = load_reference_checkpoint(path, "haa500")
    assert setup.mean == (0.45, 0.45, 0.45) and setup.num_frames == 32
    assert torch.equal(loaded.head.pos_embed.weight.reshape(1, -1, 512), state["pos_embedding"])
    assert torch.equal(loaded.backbone.layer3[1].conv1[0][0].weight, state[f"{names[0]}.3.1.conv1.0.0.weight"])
    assert torch.equal(loaded.head.classifier.weight, state[f"{names[1]}.1.weight"])
    assert torch.equal(loaded.head.norm.bias, state[f"{names[1]}.0.bias"])
    assert not loaded.training


def test_reference_conversion_errors():
    with pytest.raises(WeightsError, match=r"pos_embedding has shape \(1, 100, 512\), expected \(1, 196, C\)"):
        convert_reference_state_dict({"pos_embedding": torch.zeros(1, 100, 512)}, (4, 7, 7))
    with pytest.raises(WeightsError, match="unexpected key 'optimizer'"):
        convert_reference_state_dict({"optimizer": torch.zeros(1)}, (4, 7, 7))
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'"):
        reference_model("kinetics")
