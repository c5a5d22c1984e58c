"""A worker process for ``test_messages_crash.py``: one ``Messenger.dispatch`` on the test
database, sending email over SMTP to the test's server (which holds the DATA command, so
the test can kill this process while a message is ``sending``).

Usage: python message_worker.py DATABASE_URL POLICY_PATH NOW_ISO WORKER_ID SMTP_PORT BATCH_SIZE
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from recobra.channels.email import SmtpEmailChannel
from recobra.channels.in_app import InAppChannel
from recobra.domain.messages import ChannelKind
from recobra.engine.messenger import Messenger
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkSigner
from recobra.messages.render import Renderer
from recobra.policyfile import parse_policy
from recobra.store.sql import SqlStore, make_engine

LINK_SECRET = "crash-test-link-secret-0123456789abcdef"


def main(argv: list[str]) -> int:
    url, policy_path, now_iso, worker_id, port, batch_size = argv
    now = datetime.fromisoformat(now_iso)
    policies = parse_policy(Path(policy_path).read_text(encoding="utf-8"), policy_path).policies
    store = SqlStore(make_engine(url))
    try:
        composer = TemplateComposer(
            Renderer(),
            LinkSigner(LINK_SECRET, "https://pay.example.com"),
            policies,
            Sender("Acme", "help@acme.test"),
        )
        channels = {
            ChannelKind.EMAIL: SmtpEmailChannel(
                "127.0.0.1",
                int(port),
                sender="Acme <billing@acme.test>",
                timeout=120.0,
                now=lambda: datetime(2025, 3, 3, tzinfo=UTC),
            ),
            ChannelKind.IN_APP: InAppChannel(),
        }
        messenger = Messenger(store, channels, composer, worker_id=worker_id, batch_size=int(batch_size))
        print("dispatching", flush=True)
        report = messenger.dispatch(now)
        print(f"done {report}", flush=True)
    finally:
        store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
