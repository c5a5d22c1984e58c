"""The ``recobra`` command line (Typer). Thin: parse options, call factories and services."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from recobra.bootstrap import NotInitialised, build_engine, load_policies, open_store
from recobra.gateways.loader import GatewayLoadError
from recobra.policyfile import PolicyError, load_policy_file
from recobra.settings import Settings, SettingsError, load_settings
from recobra.store.migrate import upgrade
from recobra.store.sql import make_engine
from recobra.stripe import cli as stripe_cli

if TYPE_CHECKING:
    from recobra.web.services import Services

app = typer.Typer(
    help="Recobra: recover failed subscription payments and keep customers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Check and show policy files.", no_args_is_help=True)
events_app = typer.Typer(help="Feed events to the engine.", no_args_is_help=True)
cases_app = typer.Typer(help="Look at dunning cases.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(events_app, name="events")
app.add_typer(cases_app, name="cases")
app.add_typer(stripe_cli.app, name="stripe")

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML configuration file ([recobra] table); RECOBRA_* variables override it."
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="SQLAlchemy URL; default RECOBRA_DATABASE_URL or sqlite:///recobra.db"
    ),
]
GatewayOpt = Annotated[
    str | None,
    typer.Option("--gateway", help="Gateway name (entry point) or dotted path package.module:factory"),
]
GatewaySettingOpt = Annotated[
    list[str] | None,
    typer.Option("--gateway-setting", help="KEY=VALUE passed to the gateway factory (repeatable)"),
]
PolicyOpt = Annotated[
    Path | None, typer.Option("--policy", help="Policy file (TOML); default: the shipped policy")
]
TemplatesOpt = Annotated[Path | None, typer.Option(help="Folder of templates overriding the shipped ones")]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _settings(config: Path | None, *, policy: Path | None = None, **overrides: Any) -> Settings:
    gateway_settings = overrides.pop("gateway_setting", None)
    if policy is not None:
        overrides["policy_file"] = str(policy)
    try:
        settings = load_settings(config, **overrides)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    if gateway_settings:
        extra = dict(settings.gateway_settings)
        for item in gateway_settings:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise fail(f"--gateway-setting: expected KEY=VALUE, got {item!r}")
            extra[key.strip()] = value
        settings = settings.model_copy(update={"gateway_settings": extra})
    return settings


@app.command()
def init(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Create the database schema, or upgrade it to this version's."""
    settings = _settings(config, database_url=database_url)
    engine = make_engine(settings.database_url)
    try:
        revision = upgrade(engine)
    finally:
        engine.dispose()
    console.print(f"database ready at schema revision [bold]{revision}[/]")


# ---------------------------------------------------------------- policy


@policy_app.command("check")
def policy_check(
    file: Path,
    templates: TemplatesOpt = None,
) -> None:
    """Validate a policy file and the templates of every message it sends; errors name
    the field (or template) and the reason."""
    from recobra.policyversions import check_policy  # noqa: PLC0415

    if templates is not None and not templates.is_dir():
        try:  # the file's own problems come first, as they always have
            load_policy_file(file)
        except PolicyError as exc:
            _print_policy_problems(exc)
        raise fail(f"--templates: {templates} is not a folder", 1)
    try:
        loaded = check_policy(_read_policy(file), str(file), templates)
    except PolicyError as exc:
        _print_policy_problems(exc)
    _print_policy(loaded.policies, title=f"{file}: valid (sha256 {loaded.checksum[:12]})")


def _read_policy(file: Path) -> str:
    """A policy file's text; an unreadable file is reported like an invalid one."""
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        _print_policy_problems(PolicyError(str(file), [("(file)", f"cannot read: {exc.strerror}")]))
    except UnicodeDecodeError:
        _print_policy_problems(PolicyError(str(file), [("(file)", "not UTF-8 text")]))


def _print_policy_problems(exc: PolicyError) -> NoReturn:
    """Every problem of a policy file, by field (or template), then exit status 1."""
    from recobra.policyversions import TemplateProblems  # noqa: PLC0415

    what = "its messages do not all render" if isinstance(exc, TemplateProblems) else "invalid policy"
    err.print(f"[bold red]{exc.source}: {what}[/]", highlight=False)
    for field, reason in exc.problems:
        err.print(f"  [bold]{field}[/]: {reason}", highlight=False)
    raise typer.Exit(1)


@policy_app.command("history")
def policy_history(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many versions")] = 20,
) -> None:
    """Stored policy versions, newest first; the active one is marked."""
    from recobra.store.policies import list_versions  # noqa: PLC0415

    with _opened_store(config, database_url) as store:
        rows = list_versions(store.engine, limit=limit)
    if not rows:
        console.print(
            "no policy version stored yet: the configured file is in force "
            "(store one with `recobra policy activate FILE`)"
        )
        return
    t = Table()
    for col in ("version", "active", "activated (UTC)", "created (UTC)", "sha256"):
        t.add_column(col, no_wrap=True)
    t.add_column("by")
    t.add_column("comment")
    for r in rows:
        t.add_row(
            str(r.version),
            "active" if r.active else "",
            f"{r.activated_at:%Y-%m-%d %H:%M:%S}" if r.activated_at else "never",
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            r.sha256[:12],
            r.created_by,
            r.comment,
        )
    console.print(t)


@policy_app.command("activate")
def policy_activate(
    file: Path,
    comment: Annotated[str, typer.Option(help="Why this version (kept in the history)")] = "",
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    policy: PolicyOpt = None,
) -> None:
    """Check a policy file, store it as a new version and make it the active one: new
    cases open under it, at once and without a restart (cases already open keep theirs).
    A file identical to a stored version activates that version. The first time, the
    configured policy (--policy or the settings) is recorded first, as it was in force."""
    from recobra.bootstrap import build_policy_library  # noqa: PLC0415

    settings = _settings(config, database_url=database_url, policy=policy)
    text = _read_policy(file)
    try:
        fallback = load_policies(settings)
    except PolicyError as exc:
        raise fail(str(exc)) from None
    with _opened_store(config, database_url) as store:
        library = build_policy_library(settings, store, fallback)
        try:
            checked, created = library.store(
                text,
                datetime.now(UTC),
                created_by=f"command line ({_user()})",
                comment=comment,
                activate=True,
                source=str(file),
            )
        except PolicyError as exc:
            _print_policy_problems(exc)
        except ValueError as exc:
            raise fail(str(exc), 1) from None
    version = checked.version
    how = "stored as version" if created else "already stored as version"
    since = f"{version.activated_at:%Y-%m-%d %H:%M:%S}" if version.activated_at else "?"
    console.print(f"{file} {how} {version.version}, active since {since} UTC")


def _user() -> str:
    import getpass  # noqa: PLC0415

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "unknown user"


@policy_app.command("show")
def policy_show(config: ConfigOpt = None, policy: PolicyOpt = None) -> None:
    """Show the configured policy file (or the shipped default); once versions are
    stored in the database, the active one is in effect instead (`recobra policy history`)."""
    settings = _settings(config, policy=policy)
    try:
        loaded = load_policies(settings)
    except PolicyError as exc:
        raise fail(str(exc)) from None
    _print_policy(loaded.policies, title=f"policy {loaded.policies.name!r} v{loaded.policies.version}")


def _print_policy(policies: Any, title: str) -> None:
    from recobra.domain.policy import format_duration  # noqa: PLC0415

    table = Table(title=title, title_justify="left")
    for col in (
        "policy",
        "strategy",
        "retries after failure",
        "max attempts",
        "window",
        "grace",
        "final action",
    ):
        table.add_column(col)
    for name, p in policies.policies.items():
        table.add_row(
            name,
            p.strategy.value,
            ", ".join(format_duration(s) for s in p.steps),
            str(p.max_attempts),
            f"{p.max_days}d",
            f"{p.grace_days}d",
            p.final_action.value,
        )
    console.print(table)
    seg = Table(title="segments (first match wins)", title_justify="left")
    seg.add_column("segment")
    seg.add_column("matches")
    seg.add_column("policy")
    for s in policies.segments:
        rule = {
            k: sorted(v) if isinstance(v, frozenset) else v
            for k, v in asdict(s.rule).items()
            if v not in (None, frozenset())
        }
        seg.add_row(s.name, json.dumps(rule, default=str) or "everything", s.policy)
    seg.add_row("default", "anything else", policies.default_policy)
    console.print(seg)
    offers = Table(title="save offers (by exit reason)", title_justify="left")
    offers.add_column("reason")
    offers.add_column("offer")
    for reason, offer in policies.save_offers.items():
        offers.add_row(str(reason), offer.describe())
    if policies.save_offers:
        console.print(offers)


messages_app = typer.Typer(help="Look at customer messages before they are sent.", no_args_is_help=True)
app.add_typer(messages_app, name="messages")


@messages_app.command("preview")
def messages_preview(
    kind: Annotated[str, typer.Argument(help="payment_failed, payment_reminder, final_notice, ...")],
    locale: Annotated[str, typer.Option(help="es or en (or a regional locale such as es_MX)")] = "en",
    channel: Annotated[str, typer.Option(help="email, sms, voice, push or in_app")] = "email",
    out: Annotated[Path | None, typer.Option(help="Where to write an email's HTML")] = None,
    templates: TemplatesOpt = None,
) -> None:
    """Render one message with sample data; an email's HTML goes to a file to open in a browser."""
    from recobra.messages.preview import PreviewError, preview  # noqa: PLC0415

    try:
        result = preview(kind, locale=locale, channel=channel, templates=templates)
    except PreviewError as exc:
        raise fail(str(exc), 1) from None
    for name, value in result.parts:
        console.rule(f"[bold]{name}")
        console.print(value, highlight=False, markup=False)
    if result.html:
        target = out or Path(f"preview-{kind}-{locale}.html")
        target.write_text(result.html, encoding="utf-8")
        console.print(f"\nHTML written to {target}")


# ---------------------------------------------------------------- events


@events_app.command("ingest")
def events_ingest(
    file: Annotated[Path, typer.Argument(help="JSON array, object or JSON Lines; - for stdin")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    gateway: GatewayOpt = None,
    gateway_setting: GatewaySettingOpt = None,
    policy: PolicyOpt = None,
) -> None:
    """Validate every event, then apply them all in one transaction (or none)."""
    from recobra.schemas import EventError, parse_events_text  # noqa: PLC0415

    settings = _settings(
        config,
        database_url=database_url,
        gateway=gateway,
        gateway_setting=gateway_setting,
        policy=policy,
    )
    text = sys.stdin.read() if str(file) == "-" else _read(file)
    try:
        commands = parse_events_text(text, source=str(file))
    except EventError as exc:
        err.print(f"[bold red]{file}: invalid events, nothing was written[/]", highlight=False)
        for field, reason in exc.problems:
            err.print(f"  [bold]{field}[/]: {reason}", highlight=False)
        raise typer.Exit(1) from None
    engine = _engine(settings)
    results = engine.handle_many(commands)
    dupes = sum(r.duplicate for r in results)
    console.print(f"applied {len(results) - dupes} event(s); {dupes} duplicate(s) ignored")


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"{file}: cannot read: {exc.strerror}") from None


def _engine(settings: Settings, **kwargs: Any) -> Any:
    """The engine on the configured store; it follows the active stored policy version
    (the configured file until one is stored: recobra.policyversions)."""
    from recobra.bootstrap import build_policy_library  # noqa: PLC0415

    try:
        store = kwargs.pop("store", None) or open_store(settings.database_url)
        policies = load_policies(settings)
        library = build_policy_library(settings, store, policies)
        return build_engine(settings, store=store, policies=policies, policy_source=library, **kwargs)
    except (NotInitialised, GatewayLoadError, PolicyError) as exc:
        raise fail(str(exc)) from None


# ---------------------------------------------------------------- worker


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        now = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--now: not an ISO 8601 time: {value!r}") from None
    if now.tzinfo is None:
        raise fail("--now: must include a time zone, e.g. 2026-12-01T09:00:00Z")
    return now


@app.command()
def tick(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    gateway: GatewayOpt = None,
    gateway_setting: GatewaySettingOpt = None,
    policy: PolicyOpt = None,
    now: Annotated[str | None, typer.Option(help="Act as if it were this time (ISO 8601)")] = None,
) -> None:
    """Act once on every case due now, then exit."""
    settings = _settings(
        config,
        database_url=database_url,
        gateway=gateway,
        gateway_setting=gateway_setting,
        policy=policy,
    )
    engine = _engine(settings)
    report = engine.tick(_parse_now(now))
    console.print_json(json.dumps({k: getattr(report, k) for k in report.__slots__}))


@app.command()
def worker(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    gateway: GatewayOpt = None,
    gateway_setting: GatewaySettingOpt = None,
    policy: PolicyOpt = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between polls")] = None,
    messages: Annotated[bool, typer.Option(help="Also send due customer messages")] = True,
) -> None:
    """Run the dunning loop until SIGTERM or Ctrl-C; finishes the batch in hand, then exits."""
    settings = _settings(
        config,
        database_url=database_url,
        gateway=gateway,
        gateway_setting=gateway_setting,
        policy=policy,
        poll_interval_s=interval,
    )
    engine = _engine(settings)
    messenger = _messenger(settings, engine) if messages else None
    relay = _relay(settings, engine)
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        err.print(f"received {signal.Signals(signum).name}: finishing the current batch")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    err.print(
        f"worker {settings.worker_id} polling every {settings.poll_interval_s}s "
        f"(gateway {engine.gateway.name})"
    )
    while not stopping:
        try:
            _work_once(engine, messenger, relay)
        except Exception as exc:  # one failed cycle must not stop the worker: claims expire, work resumes
            err.print(f"cycle failed: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        deadline = time.monotonic() + settings.poll_interval_s
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, settings.poll_interval_s))
    err.print("worker stopped")


# ---------------------------------------------------------------- simulate / demo


def _simulate(**kwargs: Any) -> dict[str, Any]:
    from recobra.sim.runner import SimulationError, run_simulation  # noqa: PLC0415

    try:
        return run_simulation(**kwargs, progress_console=err)
    except SimulationError as exc:
        raise fail(str(exc)) from None


def _print_report(r: dict[str, Any]) -> None:
    t = Table(title="Simulation report", title_justify="left", show_header=False)
    t.add_column("figure", style="bold")
    t.add_column("value", justify="right")
    money = ", ".join(f"{v:,} {k}" for k, v in r["recovered_amount_minor"].items()) or "0"
    rows = [
        ("invoices billed", f"{r['invoices']:,}"),
        ("failed on first attempt", f"{r['failed_invoices']:,} ({r['first_attempt_failure_rate']:.1%})"),
        ("cases opened", f"{r['cases_opened']:,}"),
        ("recovered", f"{r['recovered_invoices']:,}"),
        ("recovery rate", f"{r['recovery_rate']:.1%}"),
        ("recovered amount (minor units)", money),
        ("retry attempts", f"{r['attempts']:,}"),
        ("attempts per recovered invoice", str(r["attempts_per_recovered_invoice"])),
        (
            "days to recover (median / p90)",
            f"{r['days_to_recover']['median']} / {r['days_to_recover']['p90']}",
        ),
        ("final actions", ", ".join(f"{k}: {v:,}" for k, v in r["final_actions"].items()) or "none"),
        ("network-rule adjustments", f"{r['network_rule_adjustments']:,}"),
        (
            "still open at the end",
            str(r["cases_by_status"].get("open", 0) + r["cases_by_status"].get("exhausted", 0)),
        ),
        ("wall time", f"{r['wall_seconds']} s ({r['invoices_per_second']} invoices/s)"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    console.print(t)
    c = Table(title="Outcome by first decline category", title_justify="left")
    statuses = sorted({s for v in r["outcome_by_decline_category"].values() for s in v})
    c.add_column("category")
    for s in statuses:
        c.add_column(s, justify="right")
    for cat, counts in r["outcome_by_decline_category"].items():
        c.add_row(cat, *(f"{counts.get(s, 0):,}" for s in statuses))
    console.print(c)
    if r.get("messages_sent"):
        m = Table(title="Messages sent, by kind and channel", title_justify="left")
        m.add_column("kind")
        channels = sorted({k.split("/")[1] for k in r["messages_sent"]})
        for ch in channels:
            m.add_column(ch, justify="right")
        kinds = sorted({k.split("/")[0] for k in r["messages_sent"]})
        for kind in kinds:
            m.add_row(kind, *(f"{r['messages_sent'].get(f'{kind}/{ch}', 0):,}" for ch in channels))
        console.print(m)
        statuses = ", ".join(f"{k}: {v:,}" for k, v in r["messages_by_status"].items())
        console.print(f"Outbox: {statuses}")


StartOpt = Annotated[str, typer.Option(help="Simulated start time (ISO 8601, with zone)")]


@app.command()
def simulate(
    customers: Annotated[int, typer.Option(min=1, help="Number of subscribers")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Days to simulate")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed (business and simulated gateway)")] = 1,
    policy: PolicyOpt = None,
    gateway: Annotated[str, typer.Option(help="Gateway name or package.module:factory")] = "simulated",
    gateway_setting: GatewaySettingOpt = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", help="Empty database to simulate into; default: a temporary SQLite file"
        ),
    ] = None,
    start: StartOpt = "2026-01-01T00:00:00+00:00",
    resolution: Annotated[int, typer.Option(min=1, help="Worker polling resolution, minutes")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object")] = False,
    messages: Annotated[bool, typer.Option(help="Plan, render and send customer messages")] = True,
    messages_dir: Annotated[
        Path | None, typer.Option(help="Write every message sent to this folder (.eml, .txt, .json)")
    ] = None,
) -> None:
    """Run a synthetic subscription business through the real engine and store."""
    extra = {}
    for item in gateway_setting or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise fail(f"--gateway-setting: expected KEY=VALUE, got {item!r}")
        extra[key] = value
    tmp = None
    if database_url is None:
        tmp = tempfile.mkdtemp(prefix="recobra-sim-")
        database_url = f"sqlite:///{Path(tmp) / 'simulation.db'}"
    try:
        report = _simulate(
            customers=customers,
            days=days,
            seed=seed,
            policy=policy,
            gateway=gateway,
            gateway_settings=extra,
            database_url=database_url,
            start=_parse_now(start),
            resolution_minutes=resolution,
            show_progress=not as_json or sys.stderr.isatty(),
            messages=messages,
            messages_dir=messages_dir,
        )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo database goes")] = Path(
        "recobra-demo"
    ),
    customers: Annotated[int, typer.Option(min=1)] = 1000,
    days: Annotated[int, typer.Option(min=1)] = 120,
    seed: int = 7,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the dashboard on the demo's data afterwards")
    ] = True,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port of the dashboard (on 127.0.0.1)")] = 8000,
) -> None:
    """The one-command tour: a fresh SQLite database, a seeded business, the months up to
    today, the report; then the dashboard on that data until Ctrl-C (``--no-serve``: the
    report alone)."""
    if serve:
        _check_port_free(port)
    directory.mkdir(parents=True, exist_ok=True)
    db_file = directory / "recobra.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(directory / "messages", ignore_errors=True)
    url = f"sqlite:///{db_file}"
    console.rule("[bold]Recobra demo")
    console.print(
        f"A subscription business of {customers:,} customers in Spanish- and English-speaking "
        f"markets, {days} days, simulated payment gateway (seed {seed}).\n"
        f"Every renewal is charged through the gateway; failures open dunning cases that "
        f"the engine retries under the default policy.\n"
    )
    report = _simulate(
        customers=customers,
        days=days,
        seed=seed,
        policy=None,
        gateway="simulated",
        gateway_settings={},
        database_url=url,
        # The business's last day is today, so the dashboard's "last 30 days" show it.
        start=datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days),
        resolution_minutes=30,
        show_progress=True,
        messages_dir=directory / "messages",
    )
    _print_report(report)
    console.print(
        f"\nEvery message sent is in {directory / 'messages'} (.eml for email, .txt for SMS, voice, push)."
    )
    console.print(f"\n[bold]What to try next[/] (the database is {db_file}):")
    env = f"RECOBRA_DATABASE_URL={url}"
    console.print(f"  {env} recobra cases list --status recovered     # cases and outcomes")
    console.print(f"  {env} recobra cases show <case id>              # its timeline and reasons")
    console.print("  recobra policy show                                # the default policy")
    console.print(
        "  recobra simulate --customers 5000 --days 365 --policy my-policy.toml   # try your own policy"
    )
    console.print("  recobra simulate --json ...                        # the same report as JSON")
    if serve:
        _serve_demo_dashboard(url, seed, port, directory / "messages")


DEMO_USER = "demo@example.com"
DEMO_FILE_CHANNELS = ("email", "sms", "voice", "push", "webhook")
"""The served demo's channels that write files (into the demo's messages folder)."""


def _check_port_free(port: int) -> None:
    """Fail before the simulation, not after it, when the dashboard's port is taken."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            message = f"port {port} on 127.0.0.1 is in use: choose another with --port (or --no-serve)"
            raise fail(message) from None


def _serve_demo_dashboard(url: str, seed: int, port: int, messages_dir: Path) -> None:
    """The dashboard on the demo's database, for a demo user with a fresh random password
    (printed once), on 127.0.0.1 until Ctrl-C or SIGTERM. A worker runs beside it on the
    wall clock, so the dashboard's actions (retry now, send the link again) and the
    cases that fall due carry on; its messages go to files beside the simulation's."""
    import secrets  # noqa: PLC0415
    import threading  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from recobra.store.admins import create_admin  # noqa: PLC0415
    from recobra.web.app import create_app  # noqa: PLC0415
    from recobra.web.services import Services  # noqa: PLC0415

    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=url,
        gateway_settings={"seed": str(seed)},
        link_secret=secrets.token_hex(32),  # this run's links and sessions only
        public_url=base,
        company_name="Recobra demo",
        channels=dict.fromkeys(DEMO_FILE_CHANNELS, "file") | {"in_app": "in_app"},
        channel_settings={kind: {"directory": str(messages_dir)} for kind in DEMO_FILE_CHANNELS},
        poll_interval_s=2.0,
    )
    services = Services.from_settings(settings)
    password = secrets.token_urlsafe(12)
    create_admin(services.store.engine, DEMO_USER, password, datetime.now(UTC))
    server = uvicorn.Server(
        uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
    )
    console.rule("[bold]The dashboard")
    print(f"Dashboard: {base}/admin", flush=True)
    print(f"Sign in as {DEMO_USER} with the password {password}", flush=True)
    print("(Ctrl-C stops it; `recobra demo --no-serve` prints the report alone.)", flush=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # uvicorn shuts down on SIGTERM/SIGINT, then raises the signal again for the
        # handler it found: this one, so the demo ends normally.
        pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopping = threading.Event()
    ticker = _engine(settings, store=services.store)
    messenger, relay = _messenger(settings, ticker), _relay(settings, ticker)
    loop = (ticker, messenger, relay, settings.poll_interval_s, stopping)
    worker = threading.Thread(
        target=_work_loop,
        args=loop,
        name="recobra-demo-worker",
        daemon=True,
    )
    worker.start()
    try:
        server.run()
    finally:
        stopping.set()
        worker.join(timeout=settings.lease_s)
        services.close()
    if not server.started:
        raise fail(f"could not serve the dashboard on {base} (is the port in use? try --port)", 1)


# ---------------------------------------------------------------- cases


@cases_app.command("list")
def cases_list(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    status: Annotated[str | None, typer.Option(help="open, recovered, exhausted, ...")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """The most recent cases."""
    from sqlalchemy import select  # noqa: PLC0415

    from recobra.store.tables import CaseRow  # noqa: PLC0415

    settings = _settings(config, database_url=database_url)
    store = _store(settings)
    stmt = select(CaseRow).order_by(CaseRow.opened_at.desc()).limit(limit)
    if status:
        stmt = stmt.where(CaseRow.status == status)
    t = Table()
    for col in ("case", "status", "amount", "decline", "attempts", "next action"):
        t.add_column(col)
    from sqlalchemy.orm import Session  # noqa: PLC0415

    from recobra.domain.money import Money  # noqa: PLC0415

    with Session(store.engine) as session:
        for row in session.scalars(stmt):
            nxt = f"{row.next_action} {row.next_action_at:%Y-%m-%d %H:%M}" if row.next_action_at else "-"
            t.add_row(
                row.id,
                row.status,
                str(Money(row.amount_minor, row.currency)),
                f"{row.last_category} ({row.last_code or '-'})",
                str(row.attempts),
                nxt,
            )
    console.print(t)


@cases_app.command("show")
def cases_show(case_id: str, config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """A case's timeline: every attempt and decision with its reason."""
    from sqlalchemy import select  # noqa: PLC0415
    from sqlalchemy.orm import Session  # noqa: PLC0415

    from recobra.store.tables import CaseEventRow, CaseRow  # noqa: PLC0415

    settings = _settings(config, database_url=database_url)
    store = _store(settings)
    with Session(store.engine) as session:
        case = session.get(CaseRow, case_id)
        if case is None:
            raise fail(f"no case {case_id!r}", 1)
        console.print(
            f"[bold]{case.id}[/] invoice {case.invoice_id}, customer {case.customer_id}: "
            f"[bold]{case.status}[/], policy {case.policy_name} v{case.policy_version} "
            f"(segment {case.segment}), {case.attempts} retries"
        )
        t = Table()
        t.add_column("when (UTC)")
        t.add_column("what")
        t.add_column("why")
        for ev in session.scalars(
            select(CaseEventRow).where(CaseEventRow.case_id == case_id).order_by(CaseEventRow.id)
        ):
            what = ev.kind + (f" -> {ev.to_status}" if ev.to_status else "")
            t.add_row(f"{ev.at:%Y-%m-%d %H:%M}", what, ev.reason)
        console.print(t)


@cases_app.command("write-off")
def cases_write_off(
    case_id: str,
    reason: Annotated[str, typer.Option(help="Why (kept on the case's timeline)")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    operator: Annotated[str, typer.Option(help="Who is writing it off")] = "",
) -> None:
    """Give up on a case: no more retries, no final action, invoice uncollectible."""
    from recobra.domain.errors import IllegalTransition  # noqa: PLC0415

    settings = _settings(config, database_url=database_url)
    engine = _engine(settings)
    try:
        case = engine.write_off(case_id, datetime.now(UTC), reason=reason, operator=operator)
    except LookupError as exc:
        raise fail(str(exc.args[0]), 1) from None
    except (IllegalTransition, ValueError) as exc:
        raise fail(str(exc), 1) from None
    console.print(f"{case.id} written off")


def _messenger(settings: Settings, engine: Any) -> Any:
    from recobra.bootstrap import build_messenger  # noqa: PLC0415
    from recobra.channels.loader import ChannelLoadError  # noqa: PLC0415

    try:
        return build_messenger(
            settings, engine.store, load_policies(settings), policy_source=engine.policy_source
        )
    except (SettingsError, ChannelLoadError, PolicyError) as exc:
        raise fail(f"{exc} (or run with --no-messages)") from None


def _relay(settings: Settings, engine: Any) -> Any:
    from recobra.bootstrap import build_relay  # noqa: PLC0415

    try:
        return build_relay(settings, engine.store)
    except (SettingsError, ValueError) as exc:
        raise fail(str(exc)) from None


@contextmanager
def _opened_store(config: Path | None, database_url: str | None) -> Iterator[Any]:
    """The configured store, disposed of when the command is done with it."""
    store = _store(_settings(config, database_url=database_url))
    try:
        yield store
    finally:
        store.dispose()


def _store(settings: Settings) -> Any:
    try:
        return open_store(settings.database_url)
    except NotInitialised as exc:
        raise fail(str(exc)) from None


# ---------------------------------------------------------------- serve


def _work_once(engine: Any, messenger: Any, relay: Any) -> None:
    """One cycle of the worker: due cases, due messages, the event relay."""
    report = engine.tick(datetime.now(UTC))
    if report.claimed:
        err.print(
            f"claimed {report.claimed}, attempts {report.attempts}, recovered "
            f"{report.recovered}, final actions {report.final_actions}"
        )
    if messenger is not None:
        sent = messenger.dispatch(datetime.now(UTC))
        if sent.claimed:
            err.print(
                f"messages: sent {sent.sent}, deferred {sent.deferred}, skipped {sent.skipped}, "
                f"failed {sent.failed}"
            )
    if relay is not None:
        relay.relay(datetime.now(UTC))
    if engine.gateway.name == "stripe":  # webhook events not processed right after their answer
        from recobra.stripe.inbox import process_pending  # noqa: PLC0415

        process_pending(engine, datetime.now(UTC))


def _work_loop(engine: Any, messenger: Any, relay: Any, interval: float, stopping: Any) -> None:
    """The --with-worker thread: work every ``interval`` seconds until ``stopping`` is set."""
    while not stopping.is_set():
        try:
            _work_once(engine, messenger, relay)
        except Exception as exc:  # a failed cycle must not end the loop; the next one retries
            err.print(f"worker: cycle failed: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        stopping.wait(interval)


def _cores() -> int:
    """Cores this process may run on (the default number of server processes)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _web_app(settings: Settings) -> Any:
    """One server process's application, built in that process (``--workers`` > 1)."""
    from recobra.web.services import Services  # noqa: PLC0415

    # Each process claims cases (immediate retries) under a name of its own.
    own = settings.model_copy(update={"worker_id": f"{settings.worker_id}.{os.getpid()}"})
    return _long_lived(Services.from_settings(own))


def _long_lived(services: Services) -> Any:
    """The application on ``services``, warmed up (``Services.warm_up``), with everything
    built so far moved out of the garbage collector's sight: the libraries, schemas and
    policies live as long as the server process. A full collection walked some 175,000
    objects and stopped every thread of the service for 80-120 ms; it now walks only
    what was made since (about 18,000 objects under load)."""
    from recobra.web.app import create_app  # noqa: PLC0415

    services.warm_up()
    app = create_app(services)
    gc.collect()
    gc.freeze()
    return app


def _serve_processes(settings: Settings, host: str, port: int, workers: int) -> bool:
    """Run ``workers`` server processes on one port until SIGTERM or Ctrl-C (uvicorn's
    supervisor replaces a process that dies); False if they could not start. On Linux
    each process listens on a socket of its own (recobra.web.listening), so that
    connections spread evenly over the processes."""
    import functools  # noqa: PLC0415
    import logging  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415
    from uvicorn.config import STARTUP_FAILURE  # noqa: PLC0415
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    from recobra.web.listening import hold_port, spreads_connections  # noqa: PLC0415

    config = uvicorn.Config(
        functools.partial(_web_app, settings),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )
    if spreads_connections():
        try:
            held = hold_port(host, port)
        except OSError as exc:
            err.print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", highlight=False, markup=False)
            return False
        shown = f"[{host}]" if ":" in host else host
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on http://%s:%d (Press CTRL+C to quit); each of the %d processes "
            "listens on a socket of its own",
            shown,
            held.getsockname()[1],
            workers,
        )
        sockets: list[Any] = [held]
    else:
        sockets = [config.bind_socket()]
    try:
        supervisor = Multiprocess(config, sockets=sockets)
        supervisor.run()
    finally:
        for sock in sockets:
            sock.close()
    return not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)


@app.command()
def serve(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    gateway: GatewayOpt = None,
    gateway_setting: GatewaySettingOpt = None,
    policy: PolicyOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on")] = 8000,
    with_worker: Annotated[
        bool,
        typer.Option("--with-worker", help="Also run the worker (cases, messages, relay) in this process"),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="Server processes sharing the port (default: one per core; one on SQLite)",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API, health checks and metrics (uvicorn) until SIGTERM or Ctrl-C."""
    import threading  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from recobra.web.services import Services  # noqa: PLC0415

    settings = _settings(
        config,
        database_url=database_url,
        gateway=gateway,
        gateway_setting=gateway_setting,
        policy=policy,
    )
    try:
        services = Services.from_settings(settings)
    except (SettingsError, NotInitialised, GatewayLoadError, PolicyError) as exc:
        raise fail(str(exc)) from None
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal
        # again for the handler it found: this one, so the process ends normally.
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    thread = None
    if with_worker:
        ticker = _engine(settings, store=services.store)
        messenger = _messenger(settings, ticker) if settings.messages else None
        relay = _relay(settings, ticker)
        thread = threading.Thread(
            target=_work_loop,
            args=(ticker, messenger, relay, settings.poll_interval_s, stopping),
            name="recobra-worker",
            daemon=True,
        )
        thread.start()
        err.print(f"worker {settings.worker_id} working every {settings.poll_interval_s}s in this process")
    # SQLite takes one writer at a time: more processes would only queue on its lock.
    sqlite = settings.database_url.startswith("sqlite")
    processes = workers or (1 if sqlite else _cores())
    try:
        if processes > 1:
            started = _serve_processes(settings, host, port, processes)
        else:
            server = uvicorn.Server(
                uvicorn.Config(_long_lived(services), host=host, port=port, log_level="info")
            )
            server.run()
            started = server.started
    finally:
        stopping.set()
        if thread is not None:
            thread.join(timeout=settings.lease_s)
            if thread.is_alive():
                err.print("worker: the current tick did not finish; its claims expire after the lease")
        services.close()
    if not started:
        raise typer.Exit(1)
    err.print("server stopped")


# ---------------------------------------------------------------- api keys

api_keys_app = typer.Typer(
    help="API keys for the HTTP API (shown once, stored hashed).", no_args_is_help=True
)
app.add_typer(api_keys_app, name="api-keys")


def _list_table(first: tuple[str, int], *columns: str) -> Table:
    """A table of credentials: the first column (its least width) kept on one line,
    then ``columns`` and a status."""
    t = Table()
    t.add_column(first[0], no_wrap=True, min_width=first[1] or None)
    for col in (*columns, "status"):
        t.add_column(col)
    return t


def _lifetime(
    created: datetime, last_used: datetime | None, ended: datetime | None, ended_as: str
) -> tuple[str, str, str]:
    """Created, last used (or never) and the status (active, or revoked/disabled when)."""
    return (
        f"{created:%Y-%m-%d %H:%M}",
        f"{last_used:%Y-%m-%d %H:%M}" if last_used else "never",
        f"{ended_as} {ended:%Y-%m-%d %H:%M}" if ended else "active",
    )


@api_keys_app.command("create")
def api_keys_create(
    name: Annotated[str, typer.Argument(help="What uses the key, e.g. billing-backend")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create a key and print it, once: only its hash is kept."""
    from recobra.store.keys import create_key  # noqa: PLC0415

    with _opened_store(config, database_url) as store:
        try:
            key_id, plaintext = create_key(store.engine, name, datetime.now(UTC))
        except ValueError as exc:
            raise fail(str(exc), 1) from None
    err.print(f"API key [bold]{key_id}[/] created for {name.strip()!r}:", highlight=False)
    print(plaintext, flush=True)
    err.print(
        "[bold yellow]Store it now[/] (e.g. in your secret manager): it is shown only this once "
        "and cannot be recovered. Send it as: Authorization: Bearer <key>",
        highlight=False,
    )


@api_keys_app.command("list")
def api_keys_list(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Every key (never the keys themselves): id, name, how it starts, use and status."""
    from recobra.store.keys import list_keys  # noqa: PLC0415

    with _opened_store(config, database_url) as store:
        keys = list_keys(store.engine)
    if not keys:
        console.print("no API keys yet: create one with `recobra api-keys create NAME`")
        return
    t = _list_table(("id", max(len(k.id) for k in keys)), "name", "key", "created (UTC)", "last used (UTC)")
    for k in keys:
        t.add_row(k.id, k.name, k.display, *_lifetime(k.created_at, k.last_used_at, k.revoked_at, "revoked"))
    console.print(t)


@api_keys_app.command("revoke")
def api_keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `recobra api-keys list`)")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Revoke a key: a running service refuses it within 2 seconds (its memory of keys it
    verified a moment ago)."""
    from recobra.store.keys import get_key, revoke_key  # noqa: PLC0415

    with _opened_store(config, database_url) as store:
        before = get_key(store.engine, key_id)
        if before is None:
            raise fail(f"no API key {key_id!r} (see `recobra api-keys list`)", 1)
        if before.revoked_at is not None:
            console.print(f"{key_id} was already revoked on {before.revoked_at:%Y-%m-%d %H:%M} UTC")
            return
        revoke_key(store.engine, key_id, datetime.now(UTC))
    console.print(f"{key_id} ({before.name!r}) revoked")


# ---------------------------------------------------------------- admin users

admin_users_app = typer.Typer(
    help="People who sign in to the dashboard (/admin); passwords stored as argon2id hashes.",
    no_args_is_help=True,
)
app.add_typer(admin_users_app, name="admin-users")


@admin_users_app.command("create")
def admin_users_create(
    email: Annotated[str, typer.Argument(help="The user's email (their sign-in name)")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input (one line)")
    ] = False,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create a dashboard user; the password is asked for twice (or read from stdin)."""
    from recobra.store.admins import MIN_PASSWORD, create_admin  # noqa: PLC0415

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(
            f"Password (at least {MIN_PASSWORD} characters)", hide_input=True, confirmation_prompt=True
        )
    with _opened_store(config, database_url) as store:
        try:
            user = create_admin(store.engine, email, password, datetime.now(UTC))
        except ValueError as exc:
            raise fail(str(exc), 1) from None
    console.print(f"user {user.email} created ({user.id}): sign in at /admin", highlight=False)


@admin_users_app.command("list")
def admin_users_list(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Every dashboard user with their last sign-in and status."""
    from recobra.store.admins import list_admins  # noqa: PLC0415

    with _opened_store(config, database_url) as store:
        users = list_admins(store.engine)
    if not users:
        console.print("no users yet: create one with `recobra admin-users create EMAIL`")
        return
    t = _list_table(("email", 0), "id", "created (UTC)", "last sign-in (UTC)")
    for u in users:
        t.add_row(u.email, u.id, *_lifetime(u.created_at, u.last_login_at, u.disabled_at, "disabled"))
    console.print(t)


@admin_users_app.command("disable")
def admin_users_disable(
    email: Annotated[str, typer.Argument(help="The user's email")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Disable a user: sign-in is refused and open sessions end on their next request."""
    from recobra.store.admins import disable_admin, find_admin  # noqa: PLC0415

    with _opened_store(config, database_url) as store:
        before = find_admin(store.engine, email)
        if before is None:
            raise fail(f"no user {email.strip()!r} (see `recobra admin-users list`)", 1)
        if before.disabled_at is not None:
            console.print(f"{before.email} was already disabled on {before.disabled_at:%Y-%m-%d %H:%M} UTC")
            return
        disable_admin(store.engine, email, datetime.now(UTC))
    console.print(f"{before.email} disabled", highlight=False)


def main() -> None:
    os.environ.setdefault("COLUMNS", os.environ.get("COLUMNS", "120"))
    app()


if __name__ == "__main__":
    main()
