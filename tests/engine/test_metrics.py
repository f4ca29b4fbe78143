import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, top_k_accuracy_score

from taggnn.engine.metrics import ClassificationMeter


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    C, N = 12, 200
    labels = rng.integers(0, C - 2, N)  # two classes never occur in the ground truth
    logits = rng.normal(size=(N, C)) + 2.0 * np.eye(C)[labels] * rng.integers(0, 2, (N, 1))
    meter = ClassificationMeter(C)
    for i in range(0, N, 32):  # in batches
        meter.update(torch.tensor(logits[i:i + 32]), torch.tensor(labels[i:i + 32]))
    predicted = logits.argmax(1)
    result = meter.compute()
    assert result["top1"] == pytest.approx(accuracy_score(labels, predicted))
    assert result["top5"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=range(C)))
    # present: mean recall over classes in the ground truth (sklearn's balanced accuracy)
    with pytest.warns(UserWarning) if set(predicted) - set(labels) else _nothing():
        balanced = balanced_accuracy_score(labels, predicted)
    assert meter.mean_class_accuracy("present") == pytest.approx(balanced)
    # union: macro recall over true and predicted labels (mmaction2), absent classes count 0
    union = recall_score(labels, predicted, average="macro", zero_division=0)
    assert meter.mean_class_accuracy("union") == pytest.approx(union)
    assert result["count"] == N


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_merge_is_exact_and_per_class_rows():
    a, b, whole = ClassificationMeter(3), ClassificationMeter(3), ClassificationMeter(3)
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    labels = torch.tensor([0, 1, 1, 2])
    a.update(logits[:2], labels[:2])
    b.update(logits[2:], labels[2:])
    whole.update(logits, labels)
    a.merge_(b.confusion, b.topk_hits)
    assert torch.equal(a.confusion, whole.confusion) and a.compute() == whole.compute()
    rows = a.per_class_rows(["x", "y", "z"])
    assert rows[1] == {"class": 1, "name": "y", "support": 2, "correct": 1, "accuracy": 0.5}


def test_bad_shapes():
    meter = ClassificationMeter(4)
    with pytest.raises(ValueError, match=r"expected logits of shape \(B, 4\), got \(2, 3\)"):
        meter.update(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected labels of shape \(2,\)"):
        meter.update(torch.zeros(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got 0..7"):
        meter.update(torch.zeros(2, 4), torch.tensor([0, 7]))
