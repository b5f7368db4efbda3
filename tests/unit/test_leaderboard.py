"""The leaderboard that success and budget mails carry."""

from __future__ import annotations

from pushtrain.mail import leaderboard_html


def _record(attempt, accuracy, seconds, warm_start_from=None):
    return {"attempt": attempt, "evaluation": {"accuracy": accuracy}, "timings": {"train_seconds": seconds},
            "hparams": {"epochs": attempt * 3, "note": "<b>"}, "warm_start_from": warm_start_from}


def test_rows_are_best_first_and_say_which_attempt_a_warm_start_continued():
    text = leaderboard_html([_record(1, 0.5, 2.0), _record(2, 0.93, 1.25, warm_start_from=1)], target=0.9)
    assert text.index("<tr><td>2</td>") < text.index("<tr><td>1</td>")
    assert "<td>1.2 (continued attempt 1)</td>" in text or "<td>1.3 (continued attempt 1)</td>" in text
    assert "<td>yes</td>" in text and "<td>no</td>" in text
    assert "&lt;b&gt;" in text and "<b>" not in text  # hyperparameter values are escaped
