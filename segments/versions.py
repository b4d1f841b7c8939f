"""Saving a segment definition as YAML, and every version of it (docs/webapp.md).

The web app's builder saves through here: the file it writes is the same YAML the
pipeline and the CLI read, into the library's own folder (`SEGMENTS_PATH`), and each
save is a version in the state store with who saved it and when. Two people saving the
same segment at once cannot overwrite each other: a save names the version it was
edited from, and a newer one on disk refuses it.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, UTCDateTime, register_migrations
from segments.field_catalogue import Catalogue
from segments.validation import (
    SLUG_PATTERN,
    Issue,
    SegmentLibrary,
    SegmentValidationError,
    parse_definition,
    read_yaml,
)

versions_meta = sa.MetaData()
segment_versions = sa.Table(
    "segment_versions",
    versions_meta,
    sa.Column("segment_slug", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    # None: the file was changed outside the app (an editor, git) and found on a save.
    sa.Column("saved_by", sa.String(320), nullable=True),
    sa.Column("saved_at", UTCDateTime, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
)


def _create_versions_table(conn: Connection) -> None:
    versions_meta.create_all(conn)


register_migrations(
    "segment_versions",
    [Migration(1, "every saved version of each segment definition", _create_versions_table)],
)

# The order a definition's keys are written in, as the shipped definitions have them.
KEY_ORDER = ("name", "description", "entity", "mode", "visibility", "owner", "department",
             "tags", "include", "exclude", "workflow")  # fmt: skip


class SaveConflict(Exception):
    """Someone else saved the segment since it was opened, the name is taken, or the
    folder cannot be written."""


# A file name is the slug: short enough for every file system and every URL.
MAX_SLUG = 100


@dataclass(frozen=True)
class Version:
    slug: str
    version: int
    saved_by: str | None
    saved_at: datetime
    sha256: str
    text: str


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Dumper(yaml.SafeDumper):
    pass


def _mapping(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    # A condition, a count or a window reads best on one line, as the shipped files do.
    leaf = not any(isinstance(v, dict) for v in data.values()) and (
        "field" in data or set(data) <= {"op", "value", "from", "to"}
    )
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=leaf)


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = ">" if len(data) > 88 and "\n" not in data.rstrip("\n") else None
    if "\n" in data.rstrip("\n"):
        style = "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(dict, _mapping)
_Dumper.add_representer(str, _text)


def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def dump_definition(raw: dict[str, Any]) -> str:
    """The definition as YAML in the shipped files' layout (keys in KEY_ORDER)."""
    ordered = {k: raw[k] for k in KEY_ORDER if k in raw}
    ordered.update({k: v for k, v in raw.items() if k not in ordered})
    return yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=88)


def visible_version(version: Version, user: str) -> bool:
    """Whether `user` may read this version: shared then, or their own private one."""
    try:
        raw = read_yaml(version.text, version.slug)
    except SegmentValidationError:
        return False
    if raw.get("visibility", "shared") == "shared":
        return True
    return isinstance(raw.get("owner"), str) and raw["owner"].lower() == user.lower()


def versions_of(engine: Engine, slug: str) -> list[Version]:
    """Every recorded version of a segment, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(segment_versions)
            .where(segment_versions.c.segment_slug == slug)
            .order_by(segment_versions.c.version.desc())
        ).all()
    return [Version(r.segment_slug, r.version, r.saved_by, r.saved_at, r.sha256, r.text)
            for r in rows]  # fmt: skip


def diff_of(older: str, newer: str, slug: str) -> str:
    """What one version changed against the one before, as a unified diff."""
    return "".join(difflib.unified_diff(
        older.splitlines(keepends=True), newer.splitlines(keepends=True),
        fromfile=f"{slug} (before)", tofile=f"{slug} (this version)",
    ))  # fmt: skip


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / ".segments.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def save_definition(
    engine: Engine,
    folder: Path,
    slug: str,
    raw: dict[str, Any],
    saved_by: str,
    base_sha256: str | None,
    catalogue: Catalogue,
    library: SegmentLibrary,
) -> Version:
    """Validate and write `folder/slug.yaml`, and record it as the segment's next version.

    `base_sha256` is the file's hash when the editor opened it, None for a new segment.
    Raises SegmentValidationError for a definition `audiences validate` would refuse, and
    SaveConflict when the file changed since it was opened or the slug is taken.
    """
    file = str(folder / f"{slug}.yaml")
    if not SLUG_PATTERN.fullmatch(slug) or len(slug) > MAX_SLUG:
        raise SegmentValidationError([Issue(file, "slug", (
            f"{slug[:120]!r} is not a valid slug; use up to {MAX_SLUG} lowercase letters, "
            "digits and dashes, e.g. lapsed-physio-6-12mo"))])  # fmt: skip
    text = dump_definition(raw)
    # Checked as the library will read the file, so what is saved is never then refused.
    parse_definition(read_yaml(text, file), file, catalogue)
    target = folder / f"{slug}.yaml"
    elsewhere = library.get(slug)
    if elsewhere is not None and elsewhere.path.resolve() != target.resolve():
        raise SaveConflict(
            f"{slug!r} is defined by {elsewhere.path.name} outside the saved-segments folder "
            "and cannot be changed here; save it under a new name"
        )
    try:
        return _save(engine, folder, target, slug, text, saved_by, base_sha256)
    except OSError as exc:
        raise SaveConflict(
            f"the saved-segments folder {folder} cannot be written ({exc.strerror}); ask "
            "whoever runs the app to check SEGMENTS_PATH"
        ) from None


def _save(engine: Engine, folder: Path, target: Path, slug: str, text: str, saved_by: str,
          base_sha256: str | None) -> Version:  # fmt: skip
    with _folder_lock(folder):
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current is None and base_sha256 is not None:
            raise SaveConflict(f"{slug!r} was deleted since you opened it; save it as new")
        if current is not None and base_sha256 is None:
            raise SaveConflict(f"a segment named {slug!r} exists already; choose another name")
        known = versions_of(engine, slug)
        if current is not None and sha256_of(current) != base_sha256:
            latest = known[0] if known and known[0].sha256 == sha256_of(current) else None
            # Who saved it is said only to whom that version is visible.
            by = (f" by {latest.saved_by} at {latest.saved_at:%Y-%m-%d %H:%M} UTC"
                  if latest and latest.saved_by and visible_version(latest, saved_by)
                  else "")  # fmt: skip
            raise SaveConflict(
                f"{slug!r} was changed{by} since you opened it; reload it to see that "
                "version and make your change again"
            )
        if current == text and known and known[0].sha256 == sha256_of(text):
            return known[0]  # saved again without a change: no new version
        now = datetime.now(UTC)
        number = known[0].version if known else 0
        rows = []
        if current is not None and (not known or known[0].sha256 != sha256_of(current)):
            number += 1
            rows.append({"segment_slug": slug, "version": number, "saved_by": None,
                         "saved_at": now, "sha256": sha256_of(current), "text": current})
        number += 1
        rows.append({"segment_slug": slug, "version": number, "saved_by": saved_by,
                     "saved_at": now, "sha256": sha256_of(text), "text": text})  # fmt: skip
        with engine.begin() as conn:
            conn.execute(sa.insert(segment_versions), rows)
            _write_atomically(target, text)
    return Version(slug, number, saved_by, now, sha256_of(text), text)


def _write_atomically(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
    try:
        # Readable like a file written by hand: the pipeline may run as another user.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
