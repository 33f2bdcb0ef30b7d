"""Preparation progress bars: on a terminal for long steps only, never in a batch job's log."""

from __future__ import annotations

import io
import sys

import pytest

from tasks.common.progress import MIN_ITEMS, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("terminal", "count", "shown"), [(True, MIN_ITEMS, True), (False, MIN_ITEMS, False),
                                                          (True, MIN_ITEMS - 1, False)])  # fmt: skip
def test_a_bar_shows_on_a_terminal_for_long_steps(monkeypatch: pytest.MonkeyPatch, terminal, count, shown) -> None:
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress(range(count), count, "checking images")) == list(range(count))
    assert ("checking images" in stream.getvalue()) is shown
    if shown:
        assert f"0/{count}" in stream.getvalue()
