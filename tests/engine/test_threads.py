"""The thread count of a sweep follows the timings it is given."""

from __future__ import annotations

import torch

from engine.threads import ALL_THREADS_FROM, RETRY_EVERY, ThreadChooser, torch_threads


def _run(chooser: ThreadChooser, tokens: int, seconds: dict[int, float]) -> int:
    threads = chooser.choose(tokens)
    chooser.record(tokens, threads, seconds[threads])
    return threads


def test_both_choices_are_timed_then_the_faster_is_kept() -> None:
    chooser = ThreadChooser(4)
    seconds = {1: 0.05, 4: 0.08}  # a small sweep: one thread is faster

    first = [_run(chooser, 1, seconds) for _ in range(2)]
    then = [_run(chooser, 1, seconds) for _ in range(RETRY_EVERY - 2)]

    assert sorted(first) == [1, 4]
    assert set(then) == {1}


def test_the_other_choice_is_tried_again_and_wins_when_it_got_faster() -> None:
    chooser = ThreadChooser(2)
    for _ in range(RETRY_EVERY):
        _run(chooser, 16, {1: 0.10, 2: 0.20})
    # The machine's load changed: two threads are now the faster.
    faster_with_two = {1: 0.10, 2: 0.05}

    chosen = [_run(chooser, 16, faster_with_two) for _ in range(RETRY_EVERY)]

    assert chosen[0] == 2  # the periodic retry
    assert chosen[-1] == 2


def test_sizes_keep_their_own_timings() -> None:
    chooser = ThreadChooser(2)
    for _ in range(5):
        _run(chooser, 1, {1: 0.05, 2: 0.09})
        _run(chooser, 16, {1: 0.20, 2: 0.11})

    assert chooser.choose(1) == 1
    assert chooser.choose(16) == 2


def test_large_sweeps_and_a_fixed_chooser_use_every_thread() -> None:
    assert ThreadChooser(8).choose(ALL_THREADS_FROM) == 8
    assert {ThreadChooser(8, learns=False).choose(1) for _ in range(3)} == {8}


def test_torch_threads_restores_the_count() -> None:
    before = torch.get_num_threads()

    with torch_threads(1):
        inside = torch.get_num_threads()

    assert inside == 1
    assert torch.get_num_threads() == before
