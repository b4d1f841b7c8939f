"""Staff accounts of the web app, their sessions, sign-in throttling and the audit log.

Tables in the state store (component `webapp`):
- `webapp_users`: email (the identity segment owners are written with), name, role
  (`admin` | `staff`), department, an argon2 password hash, disabled or not.
- `webapp_sessions`: a random session id (only its SHA-256 is stored), the user (none
  before sign-in), the CSRF token of the session, when it was made and last used. A
  sign-in always makes a new session, so an id planted before sign-in is worthless.
- `webapp_signin_failures`: failed sign-ins per email, for throttling.
- `webapp_audit`: who viewed or exported which member list, and when.

Passwords and session ids never reach a log; only hashes are stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, UTCDateTime, connect_state, migrate, register_migrations

COMPONENT = "webapp"
ROLES = ("admin", "staff")
SESSION_IDLE = timedelta(hours=8)
TOUCH_EVERY = timedelta(minutes=1)
# Throttling: after this many failures for one email within the window, sign-in is
# refused until the oldest of them is older than the window.
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 10

metadata = sa.MetaData()
users = sa.Table(
    "webapp_users",
    metadata,
    sa.Column("email", sa.String(320), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("department", sa.String(100)),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
sessions = sa.Table(
    "webapp_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(320)),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
)
failures = sa.Table(
    "webapp_signin_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("email", sa.String(320), nullable=False, index=True),
    sa.Column("client", sa.String(100), nullable=False, default="?"),
    sa.Column("at", UTCDateTime, nullable=False),
)
audit = sa.Table(
    "webapp_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("target", sa.String(300), nullable=False),
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn)


def _throttle_per_client(conn: Connection) -> None:
    # A store made by the first version has no client column (a new one already has it).
    columns = {c["name"] for c in sa.inspect(conn).get_columns(failures.name)}
    if "client" not in columns:
        conn.execute(sa.text(f"alter table {failures.name} add column client "
                             "varchar(100) not null default '?'"))  # fmt: skip


register_migrations(COMPONENT, [
    Migration(1, "staff accounts, sessions, audit log", _create_v1),
    Migration(2, "throttle failed sign-ins per account and client", _throttle_per_client),
])  # fmt: skip

_hasher = PasswordHasher()


class AccountError(ValueError):
    """A bad account request; the message says what and how to fix it."""


class SignInRefused(PermissionError):
    """Wrong email or password (never saying which), a disabled account, or throttled."""


@dataclass(frozen=True)
class User:
    email: str
    name: str
    role: str
    department: str | None
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    user: User | None


def open_accounts(url: str) -> Engine:
    engine = connect_state(url)
    migrate(engine, [COMPONENT])
    return engine


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _normal(email: str) -> str:
    email = (email or "").strip().lower()
    if "@" not in email or len(email) > 320 or any(c.isspace() for c in email):
        raise AccountError(f"{email!r} is not an email address")
    return email


def _user(row) -> User:  # noqa: ANN001
    return User(row.email, row.name, row.role, row.department, bool(row.disabled))


def _check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")


def add_user(
    engine: Engine, email: str, name: str, role: str, password: str,
    department: str | None = None, now: datetime | None = None,
) -> User:  # fmt: skip
    email = _normal(email)
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of: {', '.join(ROLES)}")
    if not (name or "").strip():
        raise AccountError("a user needs a name")
    _check_password(password)
    with engine.begin() as conn:
        if conn.execute(sa.select(users.c.email).where(users.c.email == email)).first():
            raise AccountError(f"{email} already has an account")
        conn.execute(users.insert().values(
            email=email, name=name.strip(), role=role, department=department or None,
            password_hash=_hasher.hash(password), disabled=False, created_at=_now(now),
        ))  # fmt: skip
    return User(email, name.strip(), role, department or None, False)


def list_users(engine: Engine) -> list[User]:
    with engine.connect() as conn:
        return [_user(r) for r in conn.execute(sa.select(users).order_by(users.c.email))]


def get_user(engine: Engine, email: str) -> User | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(users).where(users.c.email == email.lower())).first()
    return _user(row) if row else None


def set_password(engine: Engine, email: str, password: str) -> None:
    email = _normal(email)
    _check_password(password)
    with engine.begin() as conn:
        done = conn.execute(users.update().where(users.c.email == email)
                            .values(password_hash=_hasher.hash(password)))  # fmt: skip
        if not done.rowcount:
            raise AccountError(f"no account {email}")
        # A new password ends every session of the account.
        conn.execute(sessions.delete().where(sessions.c.email == email))


def disable_user(engine: Engine, email: str) -> None:
    email = _normal(email)
    with engine.begin() as conn:
        done = conn.execute(users.update().where(users.c.email == email).values(disabled=True))
        if not done.rowcount:
            raise AccountError(f"no account {email}")
        conn.execute(sessions.delete().where(sessions.c.email == email))


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def new_session(engine: Engine, user: User | None = None, now: datetime | None = None) -> Session:
    """A fresh session (anonymous before sign-in) with its own CSRF token."""
    sid, csrf, at = secrets.token_urlsafe(32), secrets.token_urlsafe(32), _now(now)
    with engine.begin() as conn:
        # Sessions unused for longer than a session lasts, and failures older than the
        # throttling window, are of no use any more: the tables do not grow without end.
        conn.execute(sessions.delete().where(sessions.c.last_seen_at < at - SESSION_IDLE))
        conn.execute(failures.delete().where(failures.c.at < at - FAILURE_WINDOW))
        conn.execute(sessions.insert().values(
            id_hash=_id_hash(sid), email=user.email if user else None, csrf=csrf,
            created_at=at, last_seen_at=at,
        ))  # fmt: skip
    return Session(sid, csrf, user)


def find_session(engine: Engine, session_id: str | None, now: datetime | None = None) -> Session | None:  # noqa: E501
    """The live session of this id, or None (unknown, expired, or its user disabled)."""
    if not session_id:
        return None
    at = _now(now)
    with engine.begin() as conn:
        row = conn.execute(sa.select(sessions).where(sessions.c.id_hash == _id_hash(session_id))).first()  # noqa: E501
        if row is None:
            return None
        if row.last_seen_at < at - SESSION_IDLE:
            conn.execute(sessions.delete().where(sessions.c.id_hash == row.id_hash))
            return None
        user = None
        if row.email:
            u = conn.execute(sa.select(users).where(users.c.email == row.email)).first()
            if u is None or u.disabled:
                conn.execute(sessions.delete().where(sessions.c.id_hash == row.id_hash))
                return None
            user = _user(u)
        if row.last_seen_at < at - TOUCH_EVERY:
            # Kept fresh to the minute, not written on every request.
            conn.execute(sessions.update().where(sessions.c.id_hash == row.id_hash)
                         .values(last_seen_at=at))  # fmt: skip
    return Session(session_id, row.csrf, user)


def end_session(engine: Engine, session_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(sessions.delete().where(sessions.c.id_hash == _id_hash(session_id)))


def sign_in(
    engine: Engine, email: str, password: str, previous: str | None = None,
    now: datetime | None = None, client: str = "?",
) -> Session:  # fmt: skip
    """A new signed-in session for correct credentials; the previous (anonymous) session
    is ended, so its id cannot be carried into the signed-in one. Failures are throttled
    per account and client address: someone guessing from elsewhere cannot lock the
    account's owner out."""
    at = _now(now)
    try:
        email = _normal(email)
    except AccountError:
        raise SignInRefused("wrong email or password") from None
    with engine.begin() as conn:
        recent = conn.execute(
            sa.select(sa.func.count()).select_from(failures)
            .where(failures.c.email == email, failures.c.client == client,
                   failures.c.at > at - FAILURE_WINDOW)
        ).scalar_one()  # fmt: skip
    if recent >= MAX_FAILURES:
        raise SignInRefused(
            f"too many failed sign-ins for this account; try again in "
            f"{int(FAILURE_WINDOW.total_seconds() // 60)} minutes"
        )
    user_row = None
    with engine.connect() as conn:
        user_row = conn.execute(sa.select(users).where(users.c.email == email)).first()
    ok = False
    if user_row is not None:
        try:
            ok = _hasher.verify(user_row.password_hash, password or "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
    else:
        # The same work whether or not the account exists: no timing tells them apart.
        _hasher.hash(password or "-")
    if not ok or user_row is None or user_row.disabled:
        with engine.begin() as conn:
            conn.execute(failures.insert().values(email=email, client=client[:100], at=at))
        raise SignInRefused("wrong email or password")
    with engine.begin() as conn:
        conn.execute(failures.delete().where(failures.c.email == email,
                                             failures.c.client == client))  # fmt: skip
    if previous:
        end_session(engine, previous)
    return new_session(engine, _user(user_row), at)


def record(engine: Engine, user: User, action: str, target: str, now: datetime | None = None) -> None:  # noqa: E501
    """An audit row: `action` (viewed, exported, previewed, moved, ...) on `target`."""
    # Whatever a draft's name holds, the row is text a database can store.
    target = target[:300].encode("utf-8", "replace").decode("utf-8")
    with engine.begin() as conn:
        conn.execute(audit.insert().values(at=_now(now), email=user.email, action=action,
                                           target=target))  # fmt: skip


def audit_log(engine: Engine, limit: int = 200) -> list[tuple[datetime, str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit.c.at, audit.c.email, audit.c.action, audit.c.target)
                            .order_by(audit.c.id.desc()).limit(limit))  # fmt: skip
        return [tuple(r) for r in rows]
