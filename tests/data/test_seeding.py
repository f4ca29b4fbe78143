"""One seeding rule for every dataset: the draws of clip i in epoch e depend on (seed, e, i) only."""
import torch
from torch.utils.data import Dataset

from taggnn.data import EpochSeeded, VideoClipDataset, train_transform
from taggnn.data.seeding import item_seed

from .helpers import write_index_video


def _dataset(tmp_path, seed):
    paths = []
    for i in range(3):
        path = tmp_path / f"v{i}.mp4"
        write_index_video(path, 40 + 10 * i, height=40, width=80)
        paths.append((str(path), i))
    return VideoClipDataset(paths, ["a", "b", "c"], num_frames=4, sampling="random", seed=seed,
                            transform=train_transform(32, short_side=36, flip=True))


def test_a_seeded_video_dataset_seeds_its_frames_and_its_transform(tmp_path):
    dataset = _dataset(tmp_path, seed=5)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    first = dataset[1][0]
    assert torch.equal(torch.random.get_rng_state(), state)  # torch's random state is left alone
    torch.manual_seed(123)  # whatever the global state, the same clip comes out
    assert torch.equal(dataset[1][0], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][0], first)  # a new epoch, new draws


def test_epoch_seeded_reads_a_self_seeding_dataset_as_it_is(tmp_path):
    dataset = _dataset(tmp_path, seed=5)
    wrapped = EpochSeeded(_dataset(tmp_path, seed=5), seed=5)
    assert not dataset.stochastic and _dataset(tmp_path, seed=None).stochastic
    for epoch in (0, 2):
        dataset.set_epoch(epoch)
        wrapped.set_epoch(epoch)
        assert all(torch.equal(wrapped[i][0], dataset[i][0]) for i in range(len(dataset)))


def test_epoch_seeded_gives_other_datasets_the_same_draws():
    """A dataset that draws from torch's generator gets, under EpochSeeded, the first draws of a
    generator seeded with item_seed(seed, epoch, index): what a seeded video dataset's clip gets."""
    class Draws(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3)

    wrapped = EpochSeeded(Draws(), seed=7)
    wrapped.set_epoch(3)
    expected = torch.rand(3, generator=torch.Generator().manual_seed(item_seed(7, 3, 2)))
    assert torch.equal(wrapped[2], expected)
