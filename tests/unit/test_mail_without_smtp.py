"""The failure notifier without an ``smtp_default`` connection (``airflow dags test`` on a fresh install)."""

from __future__ import annotations

from pushtrain import mail


class Recorder:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str, *args) -> None:
        self.warnings.append(message % args)


class NoContext(dict):
    """A context the notifier must not read when it cannot send anyway."""

    def __getitem__(self, key):
        raise AssertionError(f"the notifier read {key!r} although no mail can be sent")


def test_without_a_connection_it_warns_once_how_to_set_one_and_sends_nothing(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    monkeypatch.setattr(mail, "_said_no_connection", False)
    notifier = mail.PipelineMailNotifier(mail.FAILURE)
    notifier._log = log = Recorder()  # Airflow's LoggingMixin keeps the logger in _log

    notifier.notify(NoContext())
    notifier.notify(NoContext())
    mail.PipelineMailNotifier(mail.SUCCESS).notify(NoContext())

    assert log.warnings == [
        "no mail sent: there is no 'smtp_default' connection. Set AIRFLOW_CONN_SMTP_DEFAULT "
        "(see .env_example) or add the connection in the web UI (Admin > Connections) to get "
        "pushtrain's mails"
    ]
