"""Running the whole asset graph in-process, as `audiences run` and `make demo` do."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
from rich.console import Console
from rich.table import Table

from clinic_audiences.environment import current_settings
from core.days import today_in
from core.run_lock import hold_warehouse
from core.warehouse import connect, scalar
from ingest.entities import ENTITIES
from orchestration.resources import PROGRESS

RUN_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "ASSET_CHECK_EVALUATION"}


class ProgressHandler(logging.Handler):
    """Turns Dagster's structured events into one line per step on the console."""

    def __init__(self, console: Console, hidden: set[str] | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.console = console
        self.started: dict[str, float] = {}
        self.failures: list[str] = []
        # Steps of private segments and work lists: shown without their names.
        self.hidden = hidden or set()

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or "?"
        private = step in self.hidden or any(step.startswith(f"{h}_") for h in self.hidden)
        if event is None:
            # A warning a step logs for the user (context.log.warning); a private step's
            # are not shown, they may name what is private.
            message = meta.get("orig_message")
            if not isinstance(message, str) or private:
                return
            if record.levelno >= logging.WARNING:
                self.console.print(f"  ! {step}: {message}", style="yellow", markup=False)
            elif message.startswith(PROGRESS):
                # What a step says of its progress (counts and rates; never patient data).
                shown = message.removeprefix(PROGRESS)
                self.console.print(f"    {step}: {shown}", style="dim", markup=False)
            return
        if event.event_type_value not in RUN_EVENTS:
            return
        if private:
            step = "(a private segment or work list)"
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = time.perf_counter()
            self.console.print(f"  … {step}", style="dim")
        elif kind == "STEP_SUCCESS":
            took = time.perf_counter() - self.started.get(step, time.perf_counter())
            self.console.print(f"  ✓ {step} ({took:.1f}s)", style="green")
        elif kind == "STEP_FAILURE":
            data = event.step_failure_data
            user = data.user_failure_data if data else None
            if private:
                # Its message names its file, which names what is private.
                message = ("failed; its owner sees why with `audiences validate` (details "
                           "of a private definition are not shown here)")  # fmt: skip
            elif user is not None and user.description:
                message = user.description  # a dg.Failure: already written for the user
            else:
                error = data.error if data else None
                message = (error.message.strip() if error else "failed").splitlines()[0]
            # A dg.Failure carries the user-facing description in its message.
            self.failures.append(f"{step}: {message}")
            self.console.print(f"  ✗ {step}: {message}", style="red", markup=False)
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            if data is not None and not data.passed:
                asset = data.asset_key.to_python_identifier()
                shown = "(a private segment)" if asset in self.hidden else (
                    data.asset_key.to_user_string()
                )
                name = f"{shown}:{data.check_name}"
                if data.severity == dg.AssetCheckSeverity.WARN:
                    # A warning (e.g. an orphan reference in the extract) does not fail the run.
                    self.console.print(f"  ! check {name} (warning)", style="yellow", markup=False)
                else:
                    self.failures.append(f"check failed: {name}")
                    self.console.print(f"  ✗ check {name}", style="red", markup=False)


def progress_logger(console: Console, handler: ProgressHandler) -> dg.LoggerDefinition:
    @dg.logger(description="One console line per step, for the `audiences` CLI.")
    def _progress(_init_context) -> logging.Logger:
        log = logging.getLogger("clinic_audiences.progress")
        log.setLevel(logging.DEBUG)
        log.propagate = False
        log.handlers = [handler]
        return log

    return _progress


# Written into a new DAGSTER_HOME: no usage statistics leave a machine that holds patient
# data, and runs of the UI (a backfill, say) go one at a time, oldest day first, as one
# warehouse file has one writer and a day's membership follows the day before.
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 1
"""


def ensure_dagster_home() -> Path | None:
    """DAGSTER_HOME (when set), created with its dagster.yaml if it has none."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return home


def dagster_instance() -> dg.DagsterInstance:
    """The persistent instance when DAGSTER_HOME is set (so `dagster dev` shows CLI runs),
    else an ephemeral one."""
    if ensure_dagster_home() is not None:
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def run_pipeline(
    extracts: Path,
    fmt: str,
    as_of: date | None,
    console: Console,
    select: list[str] | None = None,
    accept_shrink: str | None = None,
    accept_incomplete: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> int:
    """Materialise every asset (or those whose key starts with one of `select`, e.g.
    `raw`, `marts`, `segments`) on one extract folder, in this process.

    `accept_shrink` (entity names, comma-separated, or 'all') accepts on purpose an extract
    that is much smaller than the last accepted one; otherwise such an extract is refused
    before anything is replaced. `accept_incomplete` loads a Cliniko pull whose pages do
    not add up (otherwise refused)."""
    from orchestration.definitions import build_definitions
    from orchestration.ingest import (
        ACCEPT_INCOMPLETE_TAG,
        ACCEPT_SHRINK_TAG,
        EXTRACTS_TAG,
        FORMAT_TAG,
    )
    from orchestration.resources import resources_for

    settings = current_settings()
    as_of = as_of or today_in(settings.clinic_timezone)
    refuse_future(as_of, settings.clinic_timezone)
    # Steps print one line each; what the steps themselves write to stdout (dbt's own
    # stream of events) goes to the run's log file instead.
    shown = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    handler = ProgressHandler(shown, private_step_keys())
    log_path = run_log_path(settings.duckdb_path, as_of)
    resources = resources_for(settings, extracts_dir=str(extracts.resolve()), extract_format=fmt)
    defs = build_definitions(
        settings, resources=resources, loggers={"progress": progress_logger(console, handler)}
    )
    job = defs.resolve_job_def("daily_refresh")
    selection = None
    if select:
        selection = [
            key for key in defs.resolve_asset_graph().get_all_asset_keys() if key.path[0] in select
        ]
        if not selection:
            raise ValueError(f"--select {','.join(select)} matches no asset")
    console.print(
        f"Running every asset on {extracts} ({fmt}) as of {as_of}, "
        f"warehouse {settings.duckdb_path}, time zone {settings.clinic_timezone}"
    )
    started = time.perf_counter()
    with (
        hold_warehouse(settings.duckdb_path, f"audiences run --extracts {extracts}"),
        dagster_instance() as instance,
        open(log_path, "w", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
    ):
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            # Only the progress logger: one line per step instead of Dagster's debug stream.
            run_config={"loggers": {"progress": {}}},
            asset_selection=selection,
            # The as-of day is the partition: every step of the run computes for it.
            partition_key=as_of.isoformat(),
            tags={
                EXTRACTS_TAG: str(extracts.resolve()),
                FORMAT_TAG: fmt,
                **({ACCEPT_SHRINK_TAG: accept_shrink} if accept_shrink else {}),
                **({ACCEPT_INCOMPLETE_TAG: "true"} if accept_incomplete else {}),
                **(extra_tags or {}),
            },
        )
    seconds = time.perf_counter() - started
    console.print(f"The full log of this run's steps (dbt's included): {log_path}", style="dim")
    print_summary(settings.duckdb_path, console, as_of)
    if not result.success or handler.failures:
        console.print(f"Run failed after {seconds:.1f}s:", style="red")
        for failure in handler.failures:
            console.print(f"  {failure}", style="red", markup=False)
        return 1
    console.print(f"Run succeeded in {seconds:.1f}s.", style="green")
    return 0


def run_log_path(duckdb_path: Path, as_of: date) -> Path:
    """Where a run's step output goes: `logs/` beside the warehouse, one file per run."""
    folder = Path(duckdb_path).resolve().parent / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return folder / f"run-{as_of.isoformat()}-{stamp}-{os.getpid()}.log"


def refuse_future(day: date, timezone: str, what: str = "--as-of") -> None:
    """Only days with a partition can be run: from PARTITIONS_START to today (in the
    clinic's time zone); a later day has no data yet."""
    from orchestration.resources import PARTITIONS_START

    today = today_in(timezone)
    if day > today:
        raise ValueError(
            f"{what} {day} is after today ({today} in {timezone}); a run is for a day that "
            "has begun. Ask for a day up to today"
        )
    if day.isoformat() < PARTITIONS_START:
        raise ValueError(
            f"{what} {day} is before {PARTITIONS_START}, the first day the pipeline has a "
            "partition for"
        )


def run_days(
    extracts: Path,
    fmt: str,
    first: date,
    last: date,
    console: Console,
    **options,
) -> int:
    """A backfill: one run per as-of day from `first` to `last`, oldest first (segment
    history and work lists move forward one day at a time), on the same extract. Stops at
    the first day that fails."""
    from datetime import timedelta

    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    # The whole range is checked before its first day runs.
    refuse_future(first, current_settings().clinic_timezone, "--from")
    refuse_future(last, current_settings().clinic_timezone, "--to")
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    backfill = f"cli-{first.isoformat()}-{last.isoformat()}"
    for n, day in enumerate(days, 1):
        console.print(f"[{n}/{len(days)}] {day}")
        code = run_pipeline(
            extracts, fmt, day, console, extra_tags={"dagster/backfill": backfill}, **options
        )
        if code != 0:
            console.print(f"Backfill stopped at {day}: {len(days) - n} day(s) not run.",
                          style="red")  # fmt: skip
            return code
    console.print(f"Backfill of {len(days)} day(s) succeeded.", style="green")
    return 0


def print_summary(duckdb_path: Path, console: Console, as_of: date | None = None) -> None:
    if not Path(duckdb_path).exists():
        return
    with connect(duckdb_path, read_only=True) as con:
        tables = {
            (s, t)
            for s, t in con.sql(
                "select table_schema, table_name from information_schema.tables"
            ).fetchall()
        }
        table = Table(title="Ingest", show_edge=False)
        table.add_column("entity")
        table.add_column("loaded", justify="right")
        table.add_column("rejected", justify="right")
        for ent in ENTITIES:
            if ("raw", ent.name) not in tables:
                continue
            loaded = scalar(con, f"select count(*) from raw.{ent.name}")
            rejected = scalar(con, f"select count(*) from raw.{ent.name}__rejected")
            table.add_row(ent.name, f"{loaded:,}", f"{rejected:,}")
        console.print(table)
        if ("marts", "patient_features") in tables:
            try:
                from clinic_audiences.headlines import headline_figures
            except ImportError:
                return
            figures = headline_figures(con)
            headline = Table(title="Headline figures", show_edge=False, show_header=False)
            headline.add_column("figure")
            headline.add_column("value", justify="right")
            for name, value in figures.items():
                shown = (
                    f"{value:,.2f}"
                    if isinstance(value, float)
                    else f"{value:,}"
                    if isinstance(value, int)
                    else str(value)
                )
                headline.add_row(name, shown)
            console.print(headline)
        if ("segments", "membership") in tables:
            private = private_segment_slugs()
            segments = Table(title="Segments", show_edge=False)
            segments.add_column("segment")
            segments.add_column("members", justify="right")
            hidden = 0
            for slug, members in con.execute(
                "select segment_slug, count(*) from segments.membership group by 1 order by 1"
            ).fetchall():
                if slug in private:
                    hidden += 1  # a private segment is its owner's alone, even by name
                    continue
                segments.add_row(slug, f"{members:,}")
            console.print(segments)
            if hidden:
                console.print(f"  and {hidden} private segment(s), shown to their owners only")
        if ("outbound", "send_plan") in tables:
            print_send_summary(con, tables, console, as_of)


def private_step_keys() -> set[str]:
    """Dagster step keys of private segments and work lists (their names are their
    owners' alone)."""
    keys = {dg.AssetKey(["segments", s]).to_python_identifier() for s in private_segment_slugs()}
    try:
        from clinic_audiences.worklist_commands import worklists_of

        lists = worklists_of(current_settings()).lists.values()
    except (ImportError, ValueError, OSError):
        lists = []
    keys |= {
        dg.AssetKey(["worklists", w.slug]).to_python_identifier()
        for w in lists
        if w.visibility == "private"
    }
    return keys


def private_segment_slugs() -> set[str]:
    try:
        from segments.library import load_library
    except ImportError:
        return set()
    try:
        library = load_library(current_settings(), None)
    except (FileNotFoundError, ValueError):
        return set()
    return {s.slug for s in library.segments if s.definition.visibility == "private"}


def print_send_summary(
    con, tables: set[tuple[str, str]], console: Console, as_of: date | None = None  # noqa: ANN001
) -> None:
    """The plan's decisions per campaign, titled by what became of it: sent, or a dry run
    and why; a plan left by an earlier run is called so."""
    plan_day = scalar(con, "select max(as_of) from outbound.send_plan")
    if as_of is not None and plan_day != as_of:
        console.print(f"This run made no send plan for {as_of}; the last one, for {plan_day}:")
    title = f"Send plan for {plan_day} (dry run)"
    sent: dict[str, tuple[int, int]] = {}
    if ("outbound", "send_report") in tables:
        report = con.execute(
            "select campaign, sent, failed, dry_run, dry_run_reason, send_date "
            "from outbound.send_report"
        ).fetchall()
        if report and report[0][5] == plan_day:
            if report[0][3]:
                reason = report[0][4] or "no SendGrid key, or OUTBOUND_SEND_DISABLED set"
                title = f"Send plan for {plan_day} (dry run: {reason})"
            else:
                title = f"Sent for {plan_day}"
                sent = {r[0]: (r[1], r[2]) for r in report}
    plan = Table(title=title, show_edge=False)
    columns = ["campaign", "send", "suppressed", "deferred"] + (["sent", "failed"] if sent else [])
    for column in columns:
        plan.add_column(column, justify="left" if column == "campaign" else "right")
    for campaign, send, suppressed, deferred in con.execute(
        """
        select campaign, count(*) filter (where decision = 'send'),
               count(*) filter (where decision = 'suppressed'),
               count(*) filter (where decision = 'deferred')
        from outbound.send_plan group by 1 order by 1
        """
    ).fetchall():
        row = [campaign, f"{send:,}", f"{suppressed:,}", f"{deferred:,}"]
        if sent:
            done, failed = sent.get(campaign, (0, 0))
            row += [f"{done:,}", f"{failed:,}"]
        plan.add_row(*row)
    console.print(plan)


def run_demo(patients: int, as_of: date | None, console: Console) -> int:
    """Generate a demo clinic (once per size and date) and run every asset on it."""
    from extract.synthetic import generate_clinic

    # The demo never sends real mail, even with SENDGRID_API_KEY in the environment.
    os.environ["OUTBOUND_SEND_DISABLED"] = "1"
    # Plan as at 10:00 clinic time, inside the campaigns' send windows, so the demo's dry
    # run shows who would be messaged rather than everyone deferred to the next window.
    os.environ.setdefault("OUTBOUND_RUN_TIME", "10:00")
    settings = current_settings()
    as_of = as_of or today_in(settings.clinic_timezone)
    refuse_future(as_of, settings.clinic_timezone)
    folder = Path("var/demo-extract") / f"{patients}-{as_of.isoformat()}"
    if not (folder / "patients.csv").exists():
        console.print(f"Generating a demo clinic of {patients:,} patients in {folder} …")
        generate_clinic(patients, folder, seed=42, fmt="csv", as_of=as_of)
    # The demo makes its own clinic: a smaller one than last time is on purpose.
    code = run_pipeline(folder, "csv", as_of, console, accept_shrink="all")
    console.print(
        "\nOpen the Dagster UI with `make ui` (http://127.0.0.1:3000): the asset graph, this "
        "run and its metadata are there."
    )
    email, password = demo_account(settings.state_db_url)
    console.print(
        f"Open the web app with `make web` (http://127.0.0.1:8080) and sign in as {email} "
        f"with the password {password} (made for this demo; `audiences users` manages "
        "real accounts)."
    )
    return code


DEMO_EMAIL = "demo@clinic.example"


def demo_account(state_db_url: str) -> tuple[str, str]:
    """The demo's staff account, with a new random password each demo (printed once)."""
    import secrets

    from webapp import accounts

    engine = accounts.open_accounts(state_db_url)
    password = secrets.token_urlsafe(12)
    if accounts.get_user(engine, DEMO_EMAIL) is None:
        accounts.add_user(engine, DEMO_EMAIL, "Demo front desk", "staff", password,
                          "front-desk")  # fmt: skip
    else:
        accounts.set_password(engine, DEMO_EMAIL, password)
    return DEMO_EMAIL, password
