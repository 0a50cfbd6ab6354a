"""The stability metrics on hand-made series whose answers are known."""

import math
import random

import pytest

from deo.bench.stability import (
    curvature_flags,
    early_warning,
    lr_sensitivity,
    olmo_spike_score,
    spike_events,
    spike_steps,
)


def noise(steps, level=1.0, spread=0.01, seed=0):
    rng = random.Random(seed)
    return [level + rng.gauss(0.0, spread) for _ in range(steps)]


def test_the_injected_spikes_and_only_they_are_found():
    values = noise(3000)
    for t in (1500, 2000, 2500):
        values[t] += 0.5  # 50 sigma
    values[2200] += 0.05  # 5 sigma: below the threshold
    assert spike_steps(values) == [1500, 2000, 2500]
    assert olmo_spike_score(values) == pytest.approx(3 / (3000 - 100))


def test_smooth_training_curves_and_gaussian_noise_have_no_spikes():
    assert olmo_spike_score(noise(5000)) == 0.0
    assert olmo_spike_score([4.0 * math.exp(-t / 500) + 1.0 for t in range(3000)]) == 0.0


def test_a_level_shift_counts_until_the_window_has_adapted_to_it():
    """A jump from 1 to 2 that stays: with k of the window's 1000 values at 2, the spread is
    sqrt(p (1 - p)) with p = k / 1000, so 2 stays 7 sigma above the mean while p <= 1/50."""
    values = [1.0] * 1200 + [2.0] * 800
    found = spike_steps(values)
    assert found == list(range(1200, 1200 + len(found))) and len(found) in (20, 21)


def exact_spike_steps(values, window=1000, sigmas=7.0, min_history=100):
    """The OLMo rule by its definition: each window's mean and spread afresh, in fsum."""
    found = []
    for t in range(min_history, len(values)):
        recent = values[max(0, t - window):t]
        mean = math.fsum(recent) / len(recent)
        spread = math.sqrt(math.fsum((v - mean) ** 2 for v in recent) / len(recent))
        if values[t] > mean and values[t] >= mean + sigmas * spread:
            found.append(t)
    return found


def test_the_score_at_round_off_level_after_a_large_spike_matches_the_definition():
    """The slingshot's shape: a loss at ~1e-9, a burst of losses ~1-100, then ~1e-9 again
    with three real spikes of 1e-8 (about 90 sigma). Running sums kept the burst's round-off
    (~1e-12 in the sum of squares) and found hundreds of false spikes and none of the real."""
    rng = random.Random(1)
    values = [1e-9 * (1 + 0.1 * rng.gauss(0, 1)) for _ in range(1200)]
    values += [100 * rng.random() for _ in range(30)]
    values += [1e-9 * (1 + 0.1 * rng.gauss(0, 1)) for _ in range(3000)]
    for t in (3230, 3730, 4130):
        values[t] = 1e-8
    found = spike_steps(values)
    assert found == exact_spike_steps(values)
    assert {3230, 3730, 4130} <= set(found) and all(t < 2300 for t in set(found) - {
        3230, 3730, 4130})


@pytest.mark.parametrize("steps, window, min_history", [
    (5, 10, 2), (99, 100, 10), (101, 50, 50), (300, 100, 2), (700, 200, 100)])
def test_spike_steps_match_the_definition_on_heavy_tailed_series(steps, window, min_history):
    rng = random.Random(steps)
    values = [rng.random() ** 8 * rng.choice([1, 1, 1, 50]) for _ in range(steps)]
    assert spike_steps(values, window, min_history=min_history) == exact_spike_steps(
        values, window, min_history=min_history)


def test_the_score_ends_where_a_run_diverged_and_short_runs_score_what_they_have():
    values = noise(600)
    values[400] += 1.0
    values[500] = math.nan
    assert spike_steps(values) == [400]
    assert olmo_spike_score(values) == pytest.approx(1 / (500 - 100))
    assert math.isnan(olmo_spike_score(noise(50)))  # nothing to score yet


def test_lr_sensitivity_is_wortsmans_formula():
    # capped at the initial loss 4: [1.0, 0.5, 4.0 (diverged), 4.0 (worse than initial)]
    finals = {1e-3: 1.0, 1e-2: 0.5, 1e-1: math.nan, 3e-1: 7.0}
    assert lr_sensitivity(finals, 4.0) == pytest.approx((1.0 + 0.5 + 4.0 + 4.0) / 4 - 0.5)
    assert lr_sensitivity({1e-3: 0.7, 1e-2: 0.7}, 4.0) == 0.0  # every lr as good as the best


@pytest.mark.parametrize("call, match", [
    (lambda: spike_steps([1.0] * 10, window=1), "window"),
    (lambda: spike_steps([1.0] * 10, window=100, min_history=200), "min_history"),
    (lambda: lr_sensitivity({}, 1.0), "final_losses"),
    (lambda: lr_sensitivity({1e-3: 1.0}, math.nan), "initial_loss"),
    (lambda: spike_events([5], [[0, 1.0]], gap=0), "gap"),
    (lambda: spike_events([5], [[0, 1.0]], floor=0.0), "floor"),
    (lambda: spike_events([5], [[0, -1.0], [5, 3.0]]), "train_loss"),  # the floor: a share of it
    (lambda: spike_events([5], [[0, math.nan], [5, 3.0]]), "train_loss"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_curvature_flags_fire_on_a_jump_over_the_recent_mean():
    steady = [[10 * i, 1.0 + 0.01 * (i % 3)] for i in range(30)]
    steady[20][1] = 5.0  # a jump at step 200
    assert curvature_flags(steady, factor=2.0, window=10) == [200]
    assert curvature_flags([[i, 1.0] for i in range(30)]) == []


def test_early_warning_counts_alarms_catches_and_leads():
    # flags at 100 (caught the spike at 150: lead 50), 400 (false: nothing 20-200 after),
    # 890 (too close to the spike at 900: lead 10 < 20); spikes at 150, 900
    result = early_warning([100, 400, 890], [150, 900], lead=20, horizon=200)
    assert result["precision"] == pytest.approx(1 / 3) and result["recall"] == 0.5
    assert result["lead"] == 50 and (result["flags"], result["spikes"]) == (3, 2)
    assert math.isnan(early_warning([], [150])["precision"])
    assert math.isnan(early_warning([100], [])["recall"])


def test_spike_events_group_episodes_and_drop_round_off_jitter():
    from deo.bench.task import SPIKE_FACTOR, SPIKE_WINDOW, spike_indices

    # a run that fits to ~1e-9 (jitter of 2-3x there) and spikes twice back to ~1: the 2x
    # rule counts the jitter too, the events are the two real spikes
    loss = [2.3 * 0.99 ** t for t in range(2000)] + [1e-9 * (1 + 2 * (t % 7 == 0))
                                                      for t in range(3000)]
    for start in (2500, 4000):  # each spike lasts 30 steps
        loss[start:start + 30] = [1.0] * 30
    spikes = spike_indices(loss, SPIKE_FACTOR, SPIKE_WINDOW)
    assert len(spikes) > 100  # the jitter
    assert spike_events(spikes, [[t, value] for t, value in enumerate(loss)]) == [2500, 4000]
    # with every 5th step recorded, an event starts within 5 steps of the truth
    recorded = [[t, loss[t]] for t in range(0, len(loss), 5)]
    events = spike_events(spikes, recorded)
    assert len(events) == 2 and all(0 <= t - s <= 5 for s, t in zip(events, (2500, 4000)))
    # an episode is one event however many steps it spans; a floor above 1 drops both
    assert spike_events([10, 50, 140, 400], [[t, 5.0] for t in range(0, 500, 10)],
                        gap=100, floor=0.5) == [10, 400]
    assert spike_events(spikes, recorded, floor=2.0) == []
    assert spike_events([], recorded) == []
