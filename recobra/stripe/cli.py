"""``recobra stripe ...``: import an account, process stored webhook events, list the
events to enable. The Stripe SDK is loaded only when one of these runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Stripe: import an account, process its webhook events.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file")]
DbOpt = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL of Recobra's database")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def _engine(config: Path | None, database_url: str | None) -> Any:
    """The configured engine, whose gateway must be Stripe's."""
    from recobra.bootstrap import NotInitialised, build_engine  # noqa: PLC0415
    from recobra.gateways.loader import GatewayLoadError  # noqa: PLC0415
    from recobra.policyfile import PolicyError  # noqa: PLC0415
    from recobra.settings import SettingsError, load_settings  # noqa: PLC0415
    from recobra.stripe.gateway import StripeGateway  # noqa: PLC0415

    try:
        settings = load_settings(config, database_url=database_url)
        engine = build_engine(settings)
    except (SettingsError, NotInitialised, GatewayLoadError, PolicyError) as exc:
        raise _fail(str(exc)) from None
    if not isinstance(engine.gateway, StripeGateway):
        engine.store.dispose()  # type: ignore[attr-defined]
        raise _fail(
            f"the configured gateway is {engine.gateway.name!r}: set RECOBRA_GATEWAY=stripe and "
            "RECOBRA_GATEWAY_SETTING_SECRET_KEY (see docs/stripe.md)"
        )
    return engine


@app.command("import")
def import_account(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    restart: Annotated[bool, typer.Option(help="Forget where an earlier import stopped; start over")] = False,
) -> None:
    """Backfill customers, cards, subscriptions and open invoices from the Stripe account.

    Resumable (a rerun continues where an interrupted one stopped) and idempotent.
    """
    import stripe  # noqa: PLC0415
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    from recobra.stripe.importer import RESOURCES, StripeImport  # noqa: PLC0415

    engine = _engine(config, database_url)
    try:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=err) as bar:
            tasks = {name: bar.add_task(f"{name}: 0", total=None) for name in RESOURCES}

            def progress(resource: str, count: int) -> None:
                bar.update(tasks[resource], description=f"{resource}: {count}")

            run = StripeImport(
                engine,
                engine.gateway.settings,
                engine.gateway.client,
                now=lambda: datetime.now(UTC),
                progress=progress,
            )
            try:
                report = run.run(restart=restart)
            except stripe.StripeError as exc:
                why = exc.user_message or exc
                raise _fail(
                    f"Stripe answered {type(exc).__name__}: {why}; run the import again to resume "
                    "where it stopped"
                ) from None
    finally:
        engine.store.dispose()
    console.print(
        f"customers {report.customers}, payment methods {report.payment_methods}, "
        f"subscriptions {report.subscriptions}, cases opened {report.cases_opened}"
    )
    if report.resumed:
        console.print(f"resumed: {', '.join(report.resumed)}")
    if report.already_done:
        console.print(f"already imported (use --restart to import again): {', '.join(report.already_done)}")
    for line in report.skipped:
        err.print(f"skipped {line}", highlight=False, markup=False)


@app.command("process-events")
def process_events(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Process the stored webhook events that are pending (the worker does this too)."""
    from recobra.stripe.inbox import process_pending  # noqa: PLC0415

    engine = _engine(config, database_url)
    try:
        report = process_pending(engine, datetime.now(UTC))
    finally:
        engine.store.dispose()
    console.print(
        f"done {report.done}, stale {report.stale}, ignored {report.ignored}, failed {report.failed}, "
        f"invalid {report.invalid}"
    )


@app.command("webhook-events")
def webhook_events() -> None:
    """The event types to enable on the Stripe webhook endpoint, one per line."""
    from recobra.stripe.inbox import HANDLED  # noqa: PLC0415

    for name in sorted(HANDLED):
        console.print(name, highlight=False)
