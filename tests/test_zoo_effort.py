"""The zoo sweep's effort scaling (bench/zoo_effort.py): costlier models get less profiling, never below the
floor, and the estimate of the chosen level fits its share of the cap whenever any level does."""

from __future__ import annotations

from bench.zoo_effort import LEVELS, PROFILE_SHARE, choose_effort, profile_cost_s


def test_cheap_models_get_the_full_effort_and_costly_ones_less():
    cheap = choose_effort(dense_ms=0.3, build_s=0.5, cap_s=120)
    assert cheap.level == 0 and (cheap.final_rounds, cheap.final_runs) == (6, 15)
    assert cheap.score_batch * cheap.score_batches == 32
    levels = [choose_effort(ms, build, 120).level for ms, build in ((0.3, 0.5), (15, 1), (40, 2), (160, 3))]
    assert levels == sorted(levels) and levels[-1] > levels[0]


def test_the_chosen_level_fits_its_share_or_is_the_floor():
    for ms, build in ((0.3, 0.5), (15, 1), (40, 2), (160, 3), (3000, 60)):
        effort = choose_effort(ms, build, 120)
        fits = profile_cost_s(effort.profile, ms, build) <= PROFILE_SHARE * 120
        assert fits or effort.profile == LEVELS[-1]
    huge = choose_effort(dense_ms=3000, build_s=60, cap_s=120)  # ViT-H at 224: the floors, the cap decides
    assert huge.profile == LEVELS[-1] and (huge.final_rounds, huge.final_runs) == (3, 3)
    assert huge.score_batch * huge.score_batches == 2
