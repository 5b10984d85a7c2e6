import numpy as np

from models.data import Interactions
from models.splits import implicit, leave_one_out, temporal
from tests.conftest import make_dataset


def test_leave_one_out_takes_last_two_in_time() -> None:
    data = make_dataset([[5, 6, 7, 8], [1, 2], [3, 4, 9]], 10)
    split = leave_one_out(data)
    assert split.test.users.tolist() == [0, 2]  # user 1 has only 2 interactions: training only
    assert split.valid.targets_of(0).tolist() == [7]
    assert split.test.targets_of(0).tolist() == [8]
    assert split.valid.history_of(0).tolist() == [5, 6]
    assert split.test.history_of(0).tolist() == [5, 6, 7]
    assert sorted(split.train.item.tolist()) == [1, 2, 3, 5, 6]


def test_temporal_split_has_no_leak_and_only_new_targets() -> None:
    data = make_dataset([list(range(10)), [0, 1, 2, 3, 4, 5, 6, 7, 0, 9]], 10)
    split = temporal(data, valid_frac=0.2, test_frac=0.2)
    cutoff = split.train.timestamp.max()
    inter = data.interactions
    assert (inter.timestamp[np.isin(inter.item, split.test.targets)] > cutoff).all() or len(split.test) == 0
    for row in range(len(split.test)):
        assert not np.isin(split.test.targets_of(row), split.test.history_of(row)).any()
    # user 1 re-consumes item 0 in the test period: that is not a target
    assert 0 not in split.test.targets_of(int(np.flatnonzero(split.test.users == 1)[0])).tolist()


def test_implicit_threshold_filters_ratings() -> None:
    data = make_dataset([[1, 2, 3]], 5)
    rated = Interactions(data.interactions.user, data.interactions.item, data.interactions.timestamp,
                         np.array([5.0, 2.0, 4.0], dtype=np.float32))  # fmt: skip
    from dataclasses import replace

    kept = implicit(replace(data, interactions=rated), 4.0)
    assert kept.interactions.item.tolist() == [1, 3]
    assert implicit(data, 4.0) is data  # no ratings: nothing to filter
