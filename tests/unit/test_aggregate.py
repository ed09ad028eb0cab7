import numpy as np
import pytest

from deployments.nodes.aggregate import top_k


def test_returns_best_k_in_descending_order():
    assert top_k([10, 11, 12, 13], np.array([0.1, 0.9, 0.5, 0.7]), 3) == [(11, pytest.approx(0.9)), (13, pytest.approx(0.7)), (12, pytest.approx(0.5))]


def test_ties_keep_request_order():
    assert [i for i, _ in top_k([5, 3, 9], np.array([0.5, 0.5, 0.5]), 3)] == [5, 3, 9]


def test_k_larger_than_the_list_returns_all():
    assert len(top_k([1, 2], np.array([0.2, 0.1]), 10)) == 2


def test_mismatched_lengths_fail_loudly():
    with pytest.raises(ValueError, match="2 items but 3 scores"):
        top_k([1, 2], np.array([0.1, 0.2, 0.3]), 1)
