"""A local SMTP server that saves every mail it receives as an ``.eml`` file (the demo's inbox).

``python -m pushtrain.mailsink --port 8025 --dir data/demo/mail`` runs it in the foreground; tests use
``MailSink`` in-process. It is a real SMTP server (aiosmtpd), so mail goes through the same
``SmtpNotifier`` -> ``smtp_default`` path as in production.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import itertools
import os
import threading
import time
from email.message import EmailMessage
from pathlib import Path


class _SaveToFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
        with self._lock:
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(self._numbers):04d}.eml"
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(envelope.original_content or envelope.content)
        os.replace(temporary, self.folder / name)  # readers never see half a mail
        return "250 Message accepted for delivery"


class MailSink:
    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
        from aiosmtpd.controller import Controller

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.controller = Controller(_SaveToFolder(self.folder), hostname=host, port=port)

    def __enter__(self) -> MailSink:
        self.controller.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.controller.stop()

    def messages(self) -> list[EmailMessage]:
        return read_mails(self.folder)


def read_mails(folder: Path) -> list[EmailMessage]:
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(Path(folder).glob("*.eml"))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    with MailSink(args.dir, args.host, args.port):
        print(f"[mailsink] saving mail sent to {args.host}:{args.port} into {args.dir}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
