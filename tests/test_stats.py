import math

import pytest

import stats


def test_the_interval_of_a_mean_matches_a_hand_computed_t_interval():
    # 1, 2, 3: mean 2, sample sd 1, t(0.975, 2) = 4.302653 (a printed t table), so 2 ± 4.302653 / sqrt(3).
    estimate = stats.mean_interval([3.0, 1.0, 2.0])
    assert estimate.mean == 2.0 and estimate.n == 3
    assert estimate.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    # Ten values 0..9: mean 4.5, sd 3.02765, t(0.975, 9) = 2.262157.
    assert stats.mean_interval([float(v) for v in range(10)]).half_width == pytest.approx(
        2.262157 * 3.0276504 / math.sqrt(10), rel=1e-6
    )


def test_one_value_has_no_interval_and_says_nothing_about_zero():
    estimate = stats.mean_interval([1.5])
    assert (estimate.mean, estimate.half_width, estimate.covers_zero) == (1.5, None, None)
    assert estimate.format(2) == "1.50"
    with pytest.raises(ValueError):
        stats.mean_interval([])


def test_a_difference_pairs_runs_seed_by_seed_and_ignores_unpaired_seeds():
    # By seed the differences are 1, 1, 1: paired, the interval has zero width. Compared as two unpaired
    # samples, or paired in the dicts' order (5 - 2, 1 - 4, 3 - 0), it would not.
    values, reference = {0: 5.0, 1: 1.0, 2: 3.0, 7: 100.0}, {2: 2.0, 0: 4.0, 1: 0.0, 5: -50.0}
    difference = stats.paired_difference(values, reference)
    assert (difference.mean, difference.half_width, difference.n) == (1.0, 0.0, 3)
    assert difference.covers_zero is False
    assert stats.paired_difference({0: 1.0}, {1: 1.0}) is None


def test_a_difference_whose_interval_covers_zero_is_not_significant():
    # Differences 1, -1, 0.5: mean 1/6, far inside its interval.
    difference = stats.paired_difference({0: 2.0, 1: 0.0, 2: 1.5}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert difference.mean == pytest.approx(1 / 6) and difference.covers_zero is True
    assert difference.format(2) == f"0.17 ± {difference.half_width:.2f}"


def test_the_pareto_front_keeps_what_nothing_beats_on_both_cost_and_quality():
    points = [(1.0, 10.0), (2.0, 12.0), (3.0, 11.0), (2.0, 9.0), (4.0, 15.0), (1.0, 10.0)]
    # (3, 11) is beaten by (2, 12); (2, 9) by (1, 10); the duplicate (1, 10) pair beat neither of each other.
    assert stats.pareto_front(points) == [0, 5, 1, 4]
