"""Batch loops show a progress bar on a terminal, for more than one batch, and nothing in a log file."""

import io

from realfake.progress import batch_starts


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_batches_cover_every_item_once():
    starts = list(batch_starts(10, 4, desc="scoring", file=io.StringIO()))
    assert starts == [0, 4, 8]


def test_a_bar_shows_on_a_terminal_for_several_batches_only():
    shown = Terminal()
    list(batch_starts(10, 4, desc="scoring with fast", file=shown))
    assert "scoring with fast" in shown.getvalue() and "/10" in shown.getvalue()
    one_batch = Terminal()
    list(batch_starts(3, 4, desc="scoring", file=one_batch))
    assert one_batch.getvalue() == ""


def test_no_bar_in_a_log_file():
    log = io.StringIO()
    list(batch_starts(10, 4, desc="scoring", file=log))
    assert log.getvalue() == ""
