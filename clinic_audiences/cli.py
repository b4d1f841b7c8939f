"""`audiences`: the command line for everything the Dagster UI does, and a bit more.

Each sub-command is a thin shell around a function of the package that owns the
behaviour; errors the user can fix are printed as one clear line (exit code 2), never as
a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _as_of(value: str | None) -> date | None:
    from core.days import parse_day

    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError as err:
        raise UserError(str(err)) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from extract.synthetic import generate_clinic

    if args.patients < 1:
        raise UserError("--patients must be at least 1")
    try:
        summary = generate_clinic(
            args.patients,
            Path(args.out),
            seed=args.seed,
            fmt=args.format,
            as_of=_as_of(args.as_of),
            progress=lambda msg: console.print(f"  {msg}"),
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    console.print(
        f"Generated a {summary.fmt} extract of {args.patients:,} patients as of "
        f"{summary.as_of} in {summary.out_dir} ({summary.seconds:.1f}s):"
    )
    for entity, rows in summary.rows.items():
        console.print(f"  {entity:<20} {rows:>12,}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from clinic_audiences.environment import current_settings
    from extract.cliniko_api import ExtractError, extract_with

    try:
        counts = extract_with(
            current_settings().cliniko,
            Path(args.out),
            progress=lambda msg: console.print(f"  {msg}", markup=False),
            restart=args.restart,
        )
    except ExtractError as err:
        raise UserError(str(err)) from None
    console.print(f"Extracted Cliniko resources into {args.out}:")
    for resource, rows in counts.items():
        console.print(f"  {resource:<26} {rows:>10,}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from clinic_audiences.runner import run_days, run_pipeline

    extracts = Path(args.extracts)
    if not extracts.is_dir():
        raise UserError(f"--extracts {extracts}: no such folder")
    as_of = _as_of(args.as_of)
    first, last = _as_of(args.from_day), _as_of(args.to_day)
    if (first is None) != (last is None):
        raise UserError("a backfill needs both --from and --to (YYYY-MM-DD)")
    if first is not None and as_of is not None:
        raise UserError("give either --as-of (one day) or --from and --to (a backfill)")
    select = [part.strip() for part in args.select.split(",")] if args.select else None
    if args.accept_shrink:
        from ingest.guard import ShrinkRule

        try:
            ShrinkRule.parse(args.accept_shrink)
        except ValueError as err:
            raise UserError(str(err)) from None
    from core.run_lock import WarehouseBusy

    options = {"select": select, "accept_shrink": args.accept_shrink,
               "accept_incomplete": args.accept_incomplete}  # fmt: skip
    try:
        if first is not None and last is not None:
            return run_days(extracts, args.format, first, last, console, **options)
        return run_pipeline(extracts, args.format, as_of, console=console, **options)
    except (ValueError, WarehouseBusy) as err:
        raise UserError(str(err)) from None


def cmd_demo(args: argparse.Namespace) -> int:
    from clinic_audiences.runner import run_demo
    from core.run_lock import WarehouseBusy

    try:
        return run_demo(args.patients, _as_of(args.as_of), console=console)
    except (WarehouseBusy, ValueError) as err:
        raise UserError(str(err)) from None


SEGMENTS = "clinic_audiences.segment_commands"
WORKLISTS = "clinic_audiences.worklist_commands"
CAMPAIGNS = "clinic_audiences.campaign_commands"


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from clinic_audiences.environment import current_settings
    from webapp.app import create_app

    try:
        app = create_app(current_settings(), secure_cookies=args.secure_cookies)
    except ValueError as err:  # a setting that is wrong, named with how to fix it
        raise UserError(str(err)) from None
    console.print(f"The web app is at http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _password() -> str:
    """The password from AUDIENCES_PASSWORD (for scripts), else asked twice, never echoed."""
    import getpass

    given = os.environ.get("AUDIENCES_PASSWORD")
    if given:
        return given
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise UserError("the two passwords differ")
    return first


def cmd_users(action: str, args: argparse.Namespace) -> int:
    from clinic_audiences.environment import current_settings
    from webapp import accounts

    engine = accounts.open_accounts(current_settings().state_db_url)
    try:
        if action == "add":
            user = accounts.add_user(engine, args.email, args.name, args.role, _password(),
                                     args.department)  # fmt: skip
            console.print(f"added {user.email} ({user.role})")
        elif action == "list":
            for u in accounts.list_users(engine):
                state = "disabled" if u.disabled else "active"
                console.print(f"{u.email:<40} {u.role:<6} {state:<8} {u.department or ''}  "
                              f"{u.name}", markup=False)  # fmt: skip
        elif action == "disable":
            accounts.disable_user(engine, args.email)
            console.print(f"disabled {args.email}; its sessions are ended")
        else:
            accounts.set_password(engine, args.email, _password())
            console.print(f"new password set for {args.email}; its sessions are ended")
    except accounts.AccountError as err:
        raise UserError(str(err)) from None
    return 0


def _delegate(module: str, function: str, *call_args: object) -> int:
    """Call a command function of another package (imported only when used)."""
    import importlib

    try:
        fn: Callable[..., int] = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        raise UserError(
            f"this command is not available in this installation ({module}.{function})"
        ) from None
    return int(fn(*call_args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiences",
        description="Patient segmentation and workflow automation for health clinics.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="write a realistic synthetic clinic extract")
    p.add_argument("--patients", type=int, required=True, help="number of patients")
    p.add_argument("--out", required=True, help="folder to write the extract into")
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed, same data)")
    p.add_argument("--format", choices=("csv", "cliniko"), default="csv")
    p.add_argument("--as-of", help="date the history leads up to (YYYY-MM-DD; default today)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("extract", help="pull an extract from a practice management system")
    p.add_argument("system", choices=("cliniko",))
    p.add_argument("--out", required=True, help="folder to write the pages into")
    p.add_argument(
        "--restart", action="store_true", help="start over instead of resuming an earlier pull"
    )
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("run", help="materialise every asset on an extract folder")
    p.add_argument("--extracts", required=True, help="the extract folder")
    p.add_argument("--format", choices=("csv", "cliniko"), default="csv")
    p.add_argument("--as-of", help="as-of day: the partition to materialise (YYYY-MM-DD; "
                   "default today in CLINIC_TIMEZONE)")
    p.add_argument("--from", dest="from_day", metavar="D1",
                   help="backfill: the first day of a range, with --to (oldest first)")
    p.add_argument("--to", dest="to_day", metavar="D2", help="backfill: the last day of the range")
    p.add_argument(
        "--select",
        help="only assets whose key's first part is one of these, e.g. raw or raw,staging,marts",
    )
    p.add_argument(
        "--accept-shrink",
        metavar="ENTITIES",
        help="accept on purpose an extract with far fewer rows than the last accepted one, "
        "for these entities (comma-separated) or 'all'; without it such an extract is refused",
    )
    p.add_argument(
        "--accept-incomplete",
        action="store_true",
        help="load a Cliniko pull whose pages do not add up to Cliniko's total_entries (or "
        "whose next-page links are broken) on purpose; without it such a pull is refused",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="generate a demo clinic and run everything on it")
    p.add_argument("--patients", type=int, default=5000)
    p.add_argument("--as-of", help="as-of date (YYYY-MM-DD; default today)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate", help="validate segment definition files")
    p.add_argument("paths", nargs="*", help="files or folders (default: every definition)")
    p.set_defaults(func=lambda a: _delegate(SEGMENTS, "cmd_validate", a.paths))

    p = sub.add_parser("preview", help="count and sample a segment file against the warehouse")
    p.add_argument("file")
    p.add_argument("--as-of")
    p.set_defaults(func=lambda a: _delegate(SEGMENTS, "cmd_preview", a.file, a.as_of))

    p = sub.add_parser("members", help="list a segment's members on a day")
    p.add_argument("slug")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--user", help="who is asking (private segments are visible to their owner)")
    p.add_argument("--as-of", help="the day (YYYY-MM-DD; default: the segment's latest "
                   "evaluation); a day it was not evaluated for is refused")
    p.set_defaults(
        func=lambda a: _delegate(SEGMENTS, "cmd_members", a.slug, a.format, a.user, a.as_of)
    )

    p = sub.add_parser("web", help="serve the clinic web app (staff sign in with `users add`)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--secure-cookies", action="store_true",
                   help="mark the session cookie Secure (when served over HTTPS)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("users", help="staff accounts of the web app")
    users = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    q = users.add_parser("add", help="add a staff account (the password is asked for)")
    q.add_argument("email")
    q.add_argument("--name", required=True)
    q.add_argument("--role", choices=("admin", "staff"), default="staff")
    q.add_argument("--department")
    q.set_defaults(func=lambda a: cmd_users("add", a))
    q = users.add_parser("list", help="every account")
    q.set_defaults(func=lambda a: cmd_users("list", a))
    q = users.add_parser("disable", help="disable an account and end its sessions")
    q.add_argument("email")
    q.set_defaults(func=lambda a: cmd_users("disable", a))
    q = users.add_parser("set-password", help="set a new password (asked for); ends sessions")
    q.add_argument("email")
    q.set_defaults(func=lambda a: cmd_users("set-password", a))

    p = sub.add_parser("fields", help="the fields segments can use: types, operators, meaning")
    p.add_argument("--entity", choices=("patient", "case"),
                   help="only the fields of this entity (default: every entity and event)")
    p.set_defaults(func=lambda a: _delegate(SEGMENTS, "cmd_fields", a.entity))

    p = sub.add_parser("segments", help="list or re-snapshot segments")
    seg = p.add_subparsers(dest="segments_command", required=True, metavar="ACTION")
    q = seg.add_parser("list", help="list the segments you can see")
    q.add_argument("--user")
    q.set_defaults(func=lambda a: _delegate(SEGMENTS, "cmd_segments_list", a.user))
    q = seg.add_parser(
        "resnapshot", help="refreeze a snapshot segment now, against the current warehouse"
    )
    q.add_argument("slug")
    q.add_argument("--user", help="who is asking (a private segment only for its owner)")
    q.set_defaults(
        func=lambda a: _delegate(SEGMENTS, "cmd_resnapshot", a.slug, None, a.user)
    )

    p = sub.add_parser("campaigns", help="outbound campaigns: list, dry-run, send")
    camp = p.add_subparsers(dest="campaigns_command", required=True, metavar="ACTION")
    q = camp.add_parser("list", help="list campaigns")
    q.set_defaults(func=lambda a: _delegate(CAMPAIGNS, "cmd_list"))
    q = camp.add_parser("dry-run", help="plan today's sends without sending")
    q.add_argument("--as-of")
    q.add_argument("--out", help="write the full plan to this CSV file")
    q.set_defaults(func=lambda a: _delegate(CAMPAIGNS, "cmd_dry_run", a.as_of, a.out))
    q = camp.add_parser("send", help="send today's plan (needs SENDGRID_API_KEY or "
                        "TWILIO_ACCOUNT_SID)")
    q.add_argument("--as-of")
    q.set_defaults(func=lambda a: _delegate(CAMPAIGNS, "cmd_send", a.as_of))
    q = camp.add_parser(
        "test-send",
        help="send one message of a campaign, marked as a test, to an address of yours "
        "(made-up patient fields, or --patient's); nothing goes in the ledger",
    )
    q.add_argument("slug")
    q.add_argument("--to", required=True, help="an email address, or a mobile for SMS")
    q.add_argument("--patient", help="fill the template with this patient's fields")
    q.set_defaults(
        func=lambda a: _delegate(CAMPAIGNS, "cmd_test_send", a.slug, a.to, a.patient)
    )
    q = camp.add_parser(
        "lift-opt-out",
        help="forget a kept opt-out (after the patient opted in again and the "
        "practice-management system no longer lists it)",
    )
    q.add_argument("patient_id")
    q.add_argument("channel", help="email, sms, whatsapp or all")
    q.set_defaults(
        func=lambda a: _delegate(CAMPAIGNS, "cmd_lift_opt_out", a.patient_id, a.channel)
    )

    p = sub.add_parser("worklist", help="work through segment members in stages")
    wl = p.add_subparsers(dest="worklist_command", required=True, metavar="ACTION")
    q = wl.add_parser("show", help="one line per member")
    q.add_argument("slug")
    q.add_argument("--stage")
    q.add_argument("--assignee")
    q.add_argument("--format", choices=("table", "csv"), default="table")
    q.add_argument("--user")
    q.set_defaults(
        func=lambda a: _delegate(
            WORKLISTS, "cmd_show", a.slug, a.stage, a.assignee, a.format, a.user
        )
    )
    q = wl.add_parser("move", help="move a member to a stage")
    q.add_argument("slug")
    q.add_argument("member_id")
    q.add_argument("stage")
    q.add_argument("--by", required=True)
    q.add_argument("--note")
    q.set_defaults(
        func=lambda a: _delegate(
            WORKLISTS, "cmd_move", a.slug, a.member_id, a.stage, a.by, a.note
        )
    )
    q = wl.add_parser("assign", help="assign a member to a user")
    q.add_argument("slug")
    q.add_argument("member_id")
    q.add_argument("user")
    q.add_argument("--by", required=True)
    q.set_defaults(
        func=lambda a: _delegate(WORKLISTS, "cmd_assign", a.slug, a.member_id, a.user, a.by)
    )
    q = wl.add_parser("note", help="add a note to a member")
    q.add_argument("slug")
    q.add_argument("member_id")
    q.add_argument("text")
    q.add_argument("--by", required=True)
    q.set_defaults(
        func=lambda a: _delegate(WORKLISTS, "cmd_note", a.slug, a.member_id, a.text, a.by)
    )
    q = wl.add_parser("history", help="every change of a member, in order")
    q.add_argument("slug")
    q.add_argument("member_id")
    q.add_argument("--user")
    q.set_defaults(
        func=lambda a: _delegate(WORKLISTS, "cmd_history", a.slug, a.member_id, a.user)
    )
    q = wl.add_parser("counts", help="members per stage")
    q.add_argument("slug")
    q.add_argument("--user")
    q.set_defaults(func=lambda a: _delegate(WORKLISTS, "cmd_counts", a.slug, a.user))
    return parser


def environment_error(err: Exception) -> str | None:
    """What a failure of the machine or the settings means for the user, or None for a
    failure that is not of that kind (then the traceback is the useful answer)."""
    from core.settings import SettingsError

    if isinstance(err, SettingsError):
        return str(err)
    module = type(err).__module__
    if module.startswith("sqlalchemy") and type(err).__name__ == "OperationalError":
        cause = str(getattr(err, "orig", err)).splitlines()[0]
        return (f"the state store (STATE_DB_URL) cannot be opened: {cause}; check that its "
                "folder exists and is writable, or that the server is up")  # fmt: skip
    if module.startswith(("duckdb", "_duckdb")) and type(err).__name__ == "IOException":
        return (f"the warehouse (DUCKDB_PATH) cannot be opened or written: "
                f"{str(err).splitlines()[0]}")  # fmt: skip
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A terminate request (a scheduler stopping the job) stops like Ctrl-C: cleanly, with
    # the ledger saying what was and was not sent.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        err_console.print(f"error: {err}", style="red", markup=False)
        return 2
    except BrokenPipeError:
        # The reader (`| head`) has had enough: stop quietly, like other command-line
        # tools, and send what is still buffered nowhere so the final flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as err:
        # A folder that cannot be written, a full disk: the file and what the system says.
        where = f"{err.filename}: " if err.filename else ""
        err_console.print(f"error: {where}{err.strerror or err}", style="red", markup=False)
        return 2
    except Exception as err:
        message = environment_error(err)
        if message is None:
            raise
        err_console.print(f"error: {message}", style="red", markup=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
