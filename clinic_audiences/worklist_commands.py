"""`audiences worklist ...` commands as plain functions for the CLI's argparse dispatch.

Each prints its result to stdout, problems to stderr, and returns the exit code
(0 done, 1 refused or bad input). Locations come from the environment
(`STATE_DB_URL`, `SEGMENTS_PATH`, `WORKLISTS_PATH`, `CLINIC_TIMEZONE`).

    cmd_show(slug: str, stage: str | None, assignee: str | None, fmt: str, user: str | None)
        audiences worklist show SLUG [--stage S] [--assignee U] [--format table|csv] [--user U]
    cmd_move(slug: str, member_id: str, stage: str, by: str, note: str | None)
        audiences worklist move SLUG MEMBER_ID STAGE --by USER [--note TEXT]
    cmd_assign(slug: str, member_id: str, user: str, by: str)
        audiences worklist assign SLUG MEMBER_ID USER --by USER
    cmd_note(slug: str, member_id: str, text: str, by: str)
        audiences worklist note SLUG MEMBER_ID TEXT --by USER
    cmd_history(slug: str, member_id: str, user: str | None)
        audiences worklist history SLUG MEMBER_ID [--user U]
    cmd_counts(slug: str, user: str | None)
        audiences worklist counts SLUG [--user U]

`--user` says who is looking; it is only needed for private work lists, which only their
owner may see or change.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from clinic_audiences.environment import current_settings
from core.settings import Settings
from core.tables import printable
from segments.workflow_block import UnknownStageError, WorkListInfo
from workflow import api
from workflow.store import open_state
from workflow.worklist_files import read_worklists


def worklists_of(settings: Settings):
    """The work lists of the segment library and WORKLISTS_PATH."""
    from segments.library import library_folders

    return read_worklists(library_folders(settings.segments_path), settings.worklists_path)

OK, FAILED = 0, 1


class _Context:
    def __init__(self) -> None:
        self.settings = current_settings()
        self.engine: Engine = open_state(self.settings.state_db_url)
        self.tz = ZoneInfo(self.settings.clinic_timezone)

    def when(self, value: datetime | None) -> str:
        return value.astimezone(self.tz).strftime("%Y-%m-%d %H:%M") if value else "-"


def resolve_worklist(engine: Engine, slug: str, user: str | None = None) -> WorkListInfo:
    """The work list from the current definitions, else as it was last synced.

    Someone else's private work list does not exist for `user`: asking for it is "no work
    list", and the list of known ones leaves it out.
    """
    found = worklists_of(current_settings())
    for problem in found.problems.values():
        print(f"warning: {problem}", file=sys.stderr)
    info = found.lists.get(slug) or api.stored_worklist(engine, slug)
    if info is not None and api.visible_to(info, user):
        return info
    known = sorted(
        s
        for s in set(found.lists) | set(api.stored_worklist_slugs(engine))
        if (w := found.lists.get(s) or api.stored_worklist(engine, s)) and api.visible_to(w, user)
    )
    raise LookupError(
        f"no work list {slug!r}; work lists: {', '.join(known) or '(none defined)'}. "
        "A segment gets one with a `workflow:` block"
    )


def _run(action: Callable[[_Context], int]) -> int:
    try:
        return action(_Context())
    except (
        api.WorkListAccessError,
        api.MemberNotFoundError,
        api.ConcurrentChangeError,
        UnknownStageError,
        LookupError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    except BrokenPipeError:
        # The reader (`| head`) has had enough; send the rest of the output nowhere so the
        # interpreter's final flush does not fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK


def _table(header: list[str], rows: list[list[str]]) -> str:
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_show(
    slug: str, stage: str | None, assignee: str | None, fmt: str, user: str | None
) -> int:
    def action(ctx: _Context) -> int:
        if fmt not in ("table", "csv"):
            raise ValueError(f"--format {fmt!r} is not known; use table or csv")
        info = resolve_worklist(ctx.engine, slug, user)
        rows = api.list_members(ctx.engine, info, user=user, stage=stage, assignee=assignee)
        if fmt == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(["worklist", "member_id", "patient_id", "case_id", "stage",
                             "assignee", "due_date", "last_touch_at", "last_touch_by",
                             "entered_at", "left_segment"])  # fmt: skip
            for m in rows:
                writer.writerow([
                    info.slug, m.member_id, m.patient_id, m.case_id or "", m.stage,
                    m.assignee or "", m.due_date.isoformat() if m.due_date else "",
                    m.last_touch_at.isoformat() if m.last_touch_at else "",
                    m.last_touch_by or "", m.entered_at.isoformat(),
                    "true" if m.left_segment else "false",
                ])  # fmt: skip
            return OK
        id_header = ["case_id", "patient_id"] if info.entity == "case" else ["patient_id"]
        header = [*id_header, "stage", "assignee", "due", "last_touch"]

        def line(m: api.MemberView) -> list[str]:
            ids = [m.member_id, m.patient_id] if info.entity == "case" else [m.member_id]
            due = m.due_date.isoformat() if m.due_date else "-"
            return [*ids, m.stage, m.assignee or "-", due, ctx.when(m.last_touch_at)]

        active = [line(m) for m in rows if not m.left_segment]
        left = [line(m) for m in rows if m.left_segment]
        if stage is None and assignee is None:
            print(f"{info.slug}: {len(active)} in the segment")
        else:
            everyone = api.list_members(ctx.engine, info, user=user)
            total = sum(1 for m in everyone if not m.left_segment)
            shown = " and ".join(
                ([f"in stage {stage!r}"] if stage else [])
                + ([f"assigned to {assignee}"] if assignee else [])
            )
            print(f"{info.slug}: {len(active)} {shown}, of {total} in the segment")
        print(_table(header, active))
        if left:
            print(f"\nleft the segment ({len(left)}):")
            print(_table(header, left))
        return OK

    return _run(action)


def cmd_move(slug: str, member_id: str, stage: str, by: str, note: str | None) -> int:
    def action(ctx: _Context) -> int:
        info = resolve_worklist(ctx.engine, slug, by)
        after = api.move(ctx.engine, info, member_id, stage, by, note)
        # The event with the version this move produced says where the member came from,
        # even if someone else moved them just before.
        mine = [e for e in api.history(ctx.engine, info, member_id, by)
                if e.member_version == after.version]  # fmt: skip
        print(f"{member_id}: {mine[0].from_stage} -> {after.stage} (by {by})")
        return OK

    return _run(action)


def _check_assignable(engine: Engine, info, user: str) -> None:  # noqa: ANN001 - WorkListInfo
    """Where the clinic has web app accounts, a card goes only to an active one that can
    see the list (as on the board); without accounts, to whoever is named."""
    import sqlalchemy as sa

    from webapp import accounts

    if not user or not sa.inspect(engine).has_table("webapp_users"):
        return
    people = accounts.list_users(engine)
    if people and user.strip().lower() not in {
        u.email for u in people if not u.disabled and api.visible_to(info, u.email)
    }:
        raise ValueError(f"{user!r} is not an active account that can see {info.slug}; "
                         "`audiences users list` shows the accounts")  # fmt: skip


def cmd_assign(slug: str, member_id: str, user: str, by: str) -> int:
    def action(ctx: _Context) -> int:
        info = resolve_worklist(ctx.engine, slug, by)
        _check_assignable(ctx.engine, info, user)
        after = api.assign(ctx.engine, info, member_id, user, by)
        print(f"{member_id}: assigned to {after.assignee or '-'} (by {by})")
        return OK

    return _run(action)


def cmd_note(slug: str, member_id: str, text: str, by: str) -> int:
    def action(ctx: _Context) -> int:
        info = resolve_worklist(ctx.engine, slug, by)
        api.add_note(ctx.engine, info, member_id, text, by)
        print(f"{member_id}: note added (by {by})")
        return OK

    return _run(action)


def cmd_history(slug: str, member_id: str, user: str | None) -> int:
    def action(ctx: _Context) -> int:
        info = resolve_worklist(ctx.engine, slug, user)
        rows = [
            [
                str(e.member_version),
                ctx.when(e.at),
                e.actor,
                e.kind,
                e.from_stage or "-",
                e.to_stage or "-",
                e.assignee or "-",
                e.note or "",
            ]
            for e in api.history(ctx.engine, info, member_id, user)
        ]
        print(_table(["#", "at", "by", "event", "from", "to", "assignee", "note"], rows))
        return OK

    return _run(action)


def cmd_counts(slug: str, user: str | None) -> int:
    def action(ctx: _Context) -> int:
        info = resolve_worklist(ctx.engine, slug, user)
        counts = api.stage_counts(ctx.engine, info, user)
        rows = [
            [stage, str(counts.active.get(stage, 0)), str(counts.left_segment.get(stage, 0)),
             "yes" if stage in counts.terminal else ""]
            for stage in [*counts.stages, *(s for s in counts.active if s not in counts.stages)]
        ]  # fmt: skip
        print(_table(["stage", "members", "left_segment", "terminal"], rows))
        print(f"open (not in a terminal stage): {counts.open}")
        return OK

    return _run(action)
