import pytest
import torch

from taggnn.nn import SpatioTemporalPositionalEncoding


def test_adds_one_embedding_per_token():
    pe = SpatioTemporalPositionalEncoding((2, 3, 4), 5)
    x = torch.zeros(2, 24, 5)
    out = pe(x)
    assert torch.equal(out[1], pe.weight.reshape(24, 5))
    assert torch.equal(out[0, 1 * 12 + 2 * 4 + 3], pe.weight[1, 2, 3])


def test_interpolation_keeps_a_constant_table_and_doubles_time():
    pe = SpatioTemporalPositionalEncoding((4, 7, 7), 3)
    with torch.no_grad():
        pe.weight.copy_(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 7, 7, 3))
    table = pe.interpolate((8, 7, 7))
    assert table.shape == (8, 7, 7, 3)
    # a table that varies only in time stays monotone in time and keeps its range
    means = table.mean(dim=(1, 2, 3))
    assert torch.all(means[1:] >= means[:-1])
    assert means[0] >= 0 and means[-1] <= 3
    pe.resize((8, 7, 7))
    assert pe.grid == (8, 7, 7) and pe(torch.zeros(1, 392, 3)).shape == (1, 392, 3)
    assert pe.interpolate((8, 7, 7)) is pe.weight


def test_resize_round_trip_is_identity_for_same_grid():
    pe = SpatioTemporalPositionalEncoding((2, 2, 2), 4)
    before = pe.weight.detach().clone()
    pe.resize((2, 2, 2))
    assert torch.equal(pe.weight, before)


def test_bad_input():
    pe = SpatioTemporalPositionalEncoding((2, 2, 2), 4)
    with pytest.raises(ValueError, match=r"expected tokens of shape \(B, N=8, C=4\).*got \(1, 8, 3\)"):
        pe(torch.zeros(1, 8, 3))
    with pytest.raises(ValueError, match="grid must be a"):
        SpatioTemporalPositionalEncoding((2, 2), 4)


def test_resize_keeps_the_parameter_object_for_an_existing_optimizer():
    from taggnn.nn import TAGHead

    head = TAGHead(16, 3, (2, 2, 2), num_heads=2, ffn_dim=8)
    table = head.pos_embed.weight
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    head.set_grid((4, 2, 2))
    assert head.pos_embed.weight is table and table.shape == (4, 2, 2, 16)
    before = table.detach().clone()
    head(torch.randn(2, 16, 4, 2, 2)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, table.detach())
