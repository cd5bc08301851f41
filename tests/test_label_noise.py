"""The estimate of how many labels are wrong (confident learning on out-of-sample probabilities)
on constructed cases whose number of wrong labels is known."""

from __future__ import annotations

import numpy as np

from auditor.analyses.label_noise import (
    calibrated_joint,
    choose_probabilities,
    confident_classes,
    estimate_from,
    estimate_label_errors,
    flag_in_rank_order,
    per_class_thresholds,
    posterior_expected_errors,
    stored_probs,
)

K = 4


def constructed(
    n: int = 400, wrong: int = 40, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of `n` rows over K classes where exactly `wrong` rows are confidently a class
    other than their label and every other row is confidently its own: (probs, labels, wrong rows)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, K, n)
    labels = truth.copy()
    bad = np.sort(rng.choice(n, wrong, replace=False))
    labels[bad] = (truth[bad] + rng.integers(1, K, wrong)) % K
    confidence = rng.uniform(0.9, 0.95, n)
    probs = np.full((n, K), 0.0)
    probs[np.arange(n), truth] = confidence
    rest = (1 - confidence) / (K - 1)
    probs += np.where(probs == 0, rest[:, None], 0.0)
    return probs, labels, bad


def test_the_estimate_counts_exactly_the_rows_that_are_confidently_another_class() -> None:
    probs, labels, bad = constructed()
    est = estimate_label_errors(probs, labels)
    assert est.count == 40
    assert est.low <= 40 <= est.high and est.high - est.low < 40
    assert est.evaluated_rows == 400
    assert sum(p["count"] for p in est.pairs) == 40
    assert np.flatnonzero(est.confident_off_diagonal).tolist() == bad.tolist()


def test_the_pairs_say_which_given_label_hides_which_class() -> None:
    probs, labels, bad = constructed()
    truth = probs.argmax(1)
    expected: dict[tuple[int, int], int] = {}
    for i in bad:
        expected[(int(labels[i]), int(truth[i]))] = (
            expected.get((int(labels[i]), int(truth[i])), 0) + 1
        )
    est = estimate_label_errors(probs, labels)
    assert {(p["given"], p["suggested"]): p["count"] for p in est.pairs} == expected
    assert [p["count"] for p in est.pairs] == sorted((p["count"] for p in est.pairs), reverse=True)


def test_a_clean_set_has_no_wrong_labels_and_a_zero_interval() -> None:
    probs, labels, _ = constructed(wrong=0)
    est = estimate_label_errors(probs, labels)
    assert (est.count, est.low, est.high, est.pairs) == (0, 0, 0, [])
    assert not est.confident_off_diagonal.any()


def test_the_interval_is_the_same_under_the_same_seed_and_covers_the_truth_on_noisy_probabilities() -> (
    None
):
    rng = np.random.default_rng(3)
    probs, labels, _ = constructed(n=2000, wrong=200, seed=1)
    noisy = probs + rng.uniform(0, 0.3, probs.shape)  # less confident, not cleanly separable
    noisy /= noisy.sum(1, keepdims=True)
    a, b = (
        estimate_label_errors(noisy, labels, seed=7),
        estimate_label_errors(noisy, labels, seed=7),
    )
    assert (a.count, a.low, a.high) == (b.count, b.low, b.high)
    assert a.low < a.high and a.low <= 200 <= a.high


def test_a_subsampled_bootstrap_gives_an_interval_as_wide_as_the_full_one() -> None:
    """m-out-of-n: resamples of a tenth of the rows, rescaled, give about the full bootstrap's
    width, not sqrt(10) times it (what bounds the cost at a million rows)."""
    rng = np.random.default_rng(4)
    probs, labels, _ = constructed(n=20_000, wrong=2_000, seed=2)
    noisy = probs + rng.uniform(0, 0.3, probs.shape)
    noisy /= noisy.sum(1, keepdims=True)
    full = estimate_label_errors(noisy, labels, sample_rows=20_000)
    sub = estimate_label_errors(noisy, labels, sample_rows=2_000)
    assert full.count == sub.count
    width = lambda e: e.high - e.low  # noqa: E731
    assert 0.5 * width(full) <= width(sub) <= 2.0 * width(full)


def test_thresholds_follow_the_models_own_confidence_in_each_class() -> None:
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    labels = np.array([0, 0, 1, 1])
    assert np.allclose(per_class_thresholds(probs, labels), [0.8, 0.7])
    assert confident_classes(probs, np.array([0.8, 0.7])).tolist() == [0, -1, -1, 1]


def test_calibration_scales_each_given_class_to_its_count() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    confident = np.array([0, 1, -1, -1, 1, 1])  # two rows of class 0 pass no threshold
    joint = calibrated_joint(labels, confident, 2)
    assert np.allclose(joint, [[2.0, 2.0], [0.0, 2.0]])


def test_a_class_nobody_is_labelled_with_takes_no_rows() -> None:
    probs = np.array([[0.5, 0.0, 0.5], [0.5, 0.0, 0.5]])
    assert np.isinf(per_class_thresholds(probs, np.array([0, 2]))[1])


def test_the_flagged_set_keeps_rank_order_and_skips_rows_without_a_suggestion() -> None:
    order = np.array([3, 0, 2, 1, 4])
    has = np.array([True, True, False, True, True])
    assert flag_in_rank_order(order, has, 3).tolist() == [3, 0, 1]
    assert flag_in_rank_order(order, has, 0).tolist() == []
    assert flag_in_rank_order(order, has, 99).tolist() == [3, 0, 1, 4]


def test_the_posterior_sum_counts_the_doubt_spread_over_clean_rows() -> None:
    """The alternative not taken: on the clean constructed set every row is 90-95% sure of its
    own label, so the posterior sum reports about 30 wrong labels where there are none."""
    probs, labels, _ = constructed(wrong=0)
    assert posterior_expected_errors(probs, labels) > 20
    assert estimate_label_errors(probs, labels).count == 0


def test_stored_probabilities_read_back_from_json_give_the_same_numbers() -> None:
    import json

    probs = np.random.default_rng(0).dirichlet(np.ones(10), 50).astype(np.float32)
    stored = stored_probs(probs)
    assert np.array_equal(np.asarray(json.loads(json.dumps(stored.tolist()))), stored)


def test_an_overshooting_leave_one_out_step_falls_back_to_the_trained_probabilities() -> None:
    """Removing one example cannot turn most correct labels wrong: where the left-out model
    disagrees with far more labels than the trained one, the trained model's are read."""
    trained, labels, _ = constructed()
    overshoot = np.roll(trained, 1, axis=1)  # the left-out model prefers another class everywhere
    source, probs, reason = choose_probabilities(trained, overshoot, labels)
    assert source == "trained" and probs is trained and "97.2%" in reason
    assert estimate_from(trained, overshoot, labels).count == 40


def test_a_plausible_or_memorised_leave_one_out_step_is_read() -> None:
    trained, labels, _ = constructed()
    assert choose_probabilities(trained, trained, labels)[0] == "leave-one-out"
    memorised = np.eye(K)[labels] * 0.97 + 0.01  # fits every given label
    loo, _, _ = constructed()
    source, probs, _ = choose_probabilities(memorised, loo, labels)
    assert source == "leave-one-out" and probs is loo
    assert "leave-one-out" in estimate_from(memorised, loo, labels).method
