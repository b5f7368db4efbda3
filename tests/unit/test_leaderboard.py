"""The leaderboard that success and budget mails carry, from the pipeline's attempt records."""

from __future__ import annotations

from pushtrain.mail import leaderboard_html


def rows(text: str) -> list[str]:
    return text.split("<tr>")[2:]  # the first split is before the table, the second is the header


def test_rows_are_best_first_and_say_which_attempt_a_warm_start_continued(attempts):
    hparams = {"epochs": 3, "note": "<b>"}
    text = leaderboard_html(
        [
            attempts.evaluated(1, 0.5, train_seconds=2.0, hparams=hparams),
            attempts.evaluated(2, 0.93, train_seconds=1.25, warm_start_from=1, hparams=hparams),
        ],
        target=0.9,
    )

    first, second = rows(text)
    assert first.startswith("<td>2</td><td>0.9300</td><td>meets target</td>")
    assert "(continued attempt 1)</td>" in first
    assert second.startswith("<td>1</td><td>0.5000</td><td>below target</td><td>2.0</td>")
    assert "&lt;b&gt;" in text and "<b>" not in text  # hyperparameter values are escaped


def test_a_failed_attempt_comes_last_with_its_reason_and_no_accuracy(attempts):
    text = leaderboard_html(
        [
            attempts.failed(2, "the model could not be built: <negative> size", hparams={"conv_blocks": 4}),
            attempts.evaluated(1, 0.4),
            attempts.evaluated(3, 0.6),
        ],
        target=0.9,
    )

    assert [row[: len("<td>n</td>")] for row in rows(text)] == ["<td>3</td>", "<td>1</td>", "<td>2</td>"]
    failed = rows(text)[2]
    assert "<td>-</td><td>failed: the model could not be built: &lt;negative&gt; size</td>" in failed
    assert "conv_blocks=4" in failed
