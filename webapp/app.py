"""The clinic web app: signed-in staff work with segments and work lists.

Server-rendered (Jinja2, autoescaped) with htmx for live previews and SortableJS for
dragging cards, both vendored under `static/vendor/`. Every request is checked against
the session in the state store; every state-changing request carries the session's CSRF
token; a private segment or work list does not exist (404) for anyone but its owner.

The warehouse is read only through short-lived read-only connections; the marts of the
day the warehouse is built for are kept in memory for previews and reloaded when a new
day is built. Nothing here reads the environment: `create_app(settings)` is given
everything.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode
from zoneinfo import ZoneInfo

import polars as pl
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.run_lock import WarehouseBusy, run_in_progress
from core.settings import Settings
from core.warehouse import Warehouse, WrongDay, built_for, table_exists
from segments.evaluate import WarehouseError, WarehouseFrames, evaluate
from segments.field_catalogue import ENTITY_KEYS, CatalogueError
from segments.library import default_catalogue, load_library, preview, visible_to
from segments.members import latest_day, read_members
from segments.validation import (
    Segment,
    SegmentValidationError,
    parse_definition,
    read_yaml,
    segment_files,
)
from webapp import accounts, builder
from workflow import api
from workflow.store import open_state
from workflow.worklist_files import read_worklists

HERE = Path(__file__).resolve().parent
COOKIE = "clinic_audiences_session"
PAGE = 100
TREND_DAYS = 90
# Hints clinics rely on when sizing a list for calls.
FEW, MANY = 10, 500
# A board shows this many cards per stage (the oldest in the stage first); the rest are
# counted, and the CLI or an export lists them all.
CARDS_PER_COLUMN = 250
# The member table's sortable columns: what a click on a heading sorts by.
MEMBER_SORTS = {
    "patient": ["patient_id", "case_id"], "name": ["last_name", "first_name", "patient_id"],
    "mobile": ["mobile", "patient_id"], "email": ["email", "patient_id"],
    "last_visit": ["last_visit_date", "patient_id"],
}  # fmt: skip
# A card's version as a form carries it: plain digits, nothing int() would also take.
VERSION = re.compile(r"[0-9]{1,9}")
DAY_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DUE_RANGE = (date(2000, 1, 1), date(2099, 12, 31))
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_NOTE = 2_000
# Cards one bulk change may touch, and the form fields that allows (a board shows at most
# CARDS_PER_COLUMN per stage).
MAX_BULK = 2_000
MAX_FORM_FIELDS = MAX_BULK + 20
# What a card shows of its patient, in this order.
CARD_COLUMNS = ["patient_id", "first_name", "last_name", "mobile", "last_visit_date",
                "balance_due"]  # fmt: skip
# A Twilio webhook is a small form: anything larger is refused before it is read whole.
TWILIO_MAX_BYTES = 64 * 1024
# A signed webhook delivery older than this (seconds) is refused: a replay.
WEBHOOK_MAX_AGE = 600
# SendGrid posts batches of at most a few hundred kilobytes; anything far larger is not it.
WEBHOOK_MAX_BYTES = 5_000_000
# The campaigns page counts the ledger's messages over this many days.
LEDGER_DAYS = 30


@dataclass
class AppState:
    settings: Settings
    accounts: object
    workflow: object
    secure_cookies: bool
    frames: WarehouseFrames | None = None
    frames_day: tuple | None = None
    frames_stamp: int | None = None
    catalogue: object | None = None
    catalogue_stamp: int | None = None
    # (slug, file stamp, day) → the saved version's members, for the builder's change.
    saved_counts: dict = field(default_factory=dict)
    library: object | None = None
    library_stamp: tuple | None = None
    # The state store with every component's tables (ledger, opt-outs, pauses, segment
    # versions, provider events), migrated once on first use.
    store: object | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def create_app(settings: Settings, secure_cookies: bool = False) -> FastAPI:
    """The app for these settings. `secure_cookies`: mark the session cookie Secure (set it
    when the app is served over HTTPS, as it must be beyond 127.0.0.1)."""
    app = FastAPI(title="clinic-audiences", docs_url=None, redoc_url=None, openapi_url=None)
    state = AppState(settings, accounts.open_accounts(settings.state_db_url),
                     open_state(settings.state_db_url), secure_cookies)  # fmt: skip
    templates = Jinja2Templates(directory=HERE / "templates")
    # One part of a URL path: every character that means something in a path encoded.
    templates.env.filters["path_part"] = lambda v: quote(str(v), safe="")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    warehouse = Warehouse(settings.duckdb_path, settings.duckdb_memory_limit)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        # A NUL in the address is nothing any page has, and no database stores it.
        if "\x00" in unquote(request.url.path) or "%00" in request.url.query.lower():
            response = HTMLResponse("no such page", status_code=404)
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- sessions ---------------------------------------------------------------------

    def session_of(request: Request) -> accounts.Session | None:
        return accounts.find_session(state.accounts, request.cookies.get(COOKIE))

    def signed_in(request: Request) -> accounts.Session:
        session = session_of(request)
        if session is None or session.user is None:
            raise HTTPException(status_code=303, headers={"Location": "/signin"})
        return session

    async def checked(request: Request) -> accounts.Session:
        """The signed-in session of a state-changing request, whose CSRF token matches."""
        session = signed_in(request)
        token = request.headers.get("X-CSRF-Token")
        form = await form_of(request)
        if token is None:
            token = form.get("csrf")
        if not isinstance(token, str) or not secrets.compare_digest(token, session.csrf):
            raise HTTPException(status_code=403, detail="the form has expired; reload the page")
        return session

    async def form_of(request: Request) -> FormData:
        """The posted form (read once, then cached by starlette): text fields only, none
        holding a NUL (no database stores one), and a board's worth of fields."""
        try:
            form = await request.form(max_fields=MAX_FORM_FIELDS)
        except HTTPException:
            raise
        except Exception:  # starlette's own refusal: too many fields, a broken body
            detail = f"the form is not one this page takes (at most {MAX_BULK:,} cards at once)"
            raise HTTPException(status_code=400, detail=detail) from None
        for _, value in form.multi_items():
            if not isinstance(value, str) or "\x00" in value:
                raise HTTPException(status_code=400, detail="the form holds something that "
                                    "is not text")  # fmt: skip
        return form

    def set_cookie(response: Response, session: accounts.Session) -> None:
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict",
                            secure=state.secure_cookies, path="/")  # fmt: skip

    def page(request: Request, name: str, session: accounts.Session | None, status: int = 200,
             **context) -> HTMLResponse:  # fmt: skip
        return templates.TemplateResponse(request, name, {
            "user": session.user if session else None,
            "csrf": session.csrf if session else "", **context,
        }, status_code=status)  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return page(request, "error.html", session_of(request), 400,
                    message="the request is not one this page understands")  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def other_http_error(request: Request, exc: StarletteHTTPException):
        return page(request, "error.html", session_of(request), exc.status_code,
                    message="no such page" if exc.status_code == 404 else str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # Logged by the server with its traceback; the browser gets a plain page.
        return page(request, "error.html", None, 500,
                    message="something went wrong; the data team can find it in the log")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 303:
            return RedirectResponse(exc.headers["Location"], status_code=303)
        if "application/json" in request.headers.get("accept", "") or request.headers.get(
            "X-CSRF-Token"
        ):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return page(request, "error.html", session_of(request), exc.status_code,
                    message=exc.detail)  # fmt: skip

    @app.get("/signin", response_class=HTMLResponse)
    def signin_form(request: Request):
        session = session_of(request) or accounts.new_session(state.accounts)
        response = page(request, "signin.html", session, error=None)
        set_cookie(response, session)
        return response

    @app.post("/signin")
    async def signin_posted(request: Request):
        form = await form_of(request)  # refuses a NUL before anything is looked up
        return await run_in_threadpool(signin, request, str(form.get("email") or ""),
                                       str(form.get("password") or ""),
                                       str(form.get("csrf") or ""))  # fmt: skip

    def signin(request: Request, email: str, password: str, csrf: str) -> Response:
        before = session_of(request)
        if before is None or not secrets.compare_digest(csrf, before.csrf):
            raise HTTPException(status_code=403, detail="the form has expired; reload the page")
        try:
            client = request.client.host if request.client else "?"
            session = accounts.sign_in(state.accounts, email, password, previous=before.id,
                                       client=client)  # fmt: skip
        except accounts.SignInRefused as err:
            return page(request, "signin.html", before, 401, error=str(err))
        response = RedirectResponse("/segments", status_code=303)
        set_cookie(response, session)
        return response

    @app.post("/signout")
    async def signout(request: Request):
        session = await checked(request)
        accounts.end_session(state.accounts, session.id)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/")
    def home():
        return RedirectResponse("/segments", status_code=303)

    # -- the warehouse ----------------------------------------------------------------

    def catalogue():
        """The field catalogue, read again only when its file changes."""
        from segments.field_catalogue import DEFAULT_CATALOGUE_PATH

        try:
            stamp = DEFAULT_CATALOGUE_PATH.stat().st_mtime_ns
        except OSError:
            stamp = None
        if state.catalogue is None or stamp is None or stamp != state.catalogue_stamp:
            try:
                state.catalogue = default_catalogue(settings.duckdb_path)
            except CatalogueError as err:
                raise HTTPException(status_code=503, detail=str(err)) from None
            state.catalogue_stamp = stamp
        return state.catalogue

    def folders() -> list[Path]:
        from segments.library import library_folders

        try:
            return library_folders(settings.segments_path)
        except FileNotFoundError as err:
            raise HTTPException(status_code=503, detail=str(err)) from None

    def library():
        """The segment library, read again only when one of its files changes."""
        cat = catalogue()
        found = [f for d in folders() for f in segment_files(d)]
        stamp = (id(cat), tuple((str(f), *_stamp(f)) for f in found))
        with state.lock:
            if state.library is not None and state.library_stamp == stamp:
                return state.library
        loaded = load_library(settings, cat)
        with state.lock:
            state.library, state.library_stamp = loaded, stamp
        return loaded

    def visible_segment(slug: str, session: accounts.Session) -> Segment:
        seg = library().get(slug)
        if seg is None or not visible_to(seg, session.user.email):
            # Someone else's private segment does not exist for this user.
            raise HTTPException(status_code=404, detail=f"no segment {slug!r}")
        return seg

    def frames() -> WarehouseFrames:
        """The marts of the day the warehouse is built for, kept in memory; reloaded when
        the pipeline has built another day."""
        day = state.frames_day  # while the pipeline is writing: keep what is loaded
        try:
            stamp = settings.duckdb_path.stat().st_mtime_ns
        except OSError:
            stamp = None
        # The file is rewritten when a new day is built: look inside only then.
        if stamp != state.frames_stamp and not run_in_progress(settings.duckdb_path):
            try:
                with warehouse.connect(read_only=True) as con:
                    day = built_for(con)
                state.frames_stamp = stamp
            except WarehouseBusy:
                pass
        with state.lock:
            if state.frames is None or day != state.frames_day:
                state.frames, state.frames_day = WarehouseFrames(warehouse), day
            return state.frames

    def read(query, *args):  # noqa: ANN001
        """A short-lived read-only connection for one read. While a pipeline run holds the
        warehouse the app does not open it at all (a reader between two of the run's steps
        would stand in its writer's way): 503 with what to do."""
        if not warehouse.exists():
            raise HTTPException(status_code=503, detail="the warehouse is not built yet; "
                                "run the pipeline first")  # fmt: skip
        if run_in_progress(settings.duckdb_path):
            raise HTTPException(status_code=503, detail="the pipeline is updating the "
                                "warehouse; try again in a minute")  # fmt: skip
        try:
            with warehouse.connect(read_only=True) as con:
                return query(con, *args)
        except WarehouseBusy:
            raise HTTPException(status_code=503, detail="the pipeline is updating the "
                                "warehouse; try again in a minute") from None  # fmt: skip

    # -- segments ---------------------------------------------------------------------

    @app.get("/segments", response_class=HTMLResponse)
    def segments_page(request: Request):
        session = signed_in(request)
        segs = [s for s in library().segments if visible_to(s, session.user.email)]

        def sizes(con):
            if not table_exists(con, "segments", "segment_runs"):
                return {}
            return dict(con.execute("select segment_slug, arg_max(members, as_of) "
                                    "from segments.segment_runs group by 1").fetchall())

        counts = read(sizes) if warehouse.exists() else {}
        return page(request, "segments.html", session, segments=segs, counts=counts)

    def members_of(con, slug: str, q: str | None):
        day = latest_day(con, slug)
        if day is None:
            return None, pl.DataFrame()
        members = read_members(con, [slug], day)
        con.register("page_members", members.to_arrow())
        try:
            frame = con.sql(
                "select m.patient_id, m.case_id, p.first_name, p.last_name, p.mobile, "
                "p.email, p.last_visit_date from page_members m "
                "left join marts.patient_features p using (patient_id) "
                "order by p.last_name, p.first_name, m.patient_id"
            ).pl()
        finally:
            con.unregister("page_members")
        if q:
            needle = q.strip().lower()
            frame = frame.filter(
                pl.concat_str(["patient_id", "first_name", "last_name"], separator=" ",
                              ignore_nulls=True).str.to_lowercase().str.contains(needle,
                                                                                literal=True)
            )  # fmt: skip
        return day, frame

    def trend(con, slug: str, day: date):
        start = day - timedelta(days=TREND_DAYS - 1)
        rows = con.execute(
            "with days as (select unnest(generate_series(?::date, ?::date, interval 1 day))::date"
            " as d) select d, (select count(*) from segments.membership_history h "
            "where h.segment_slug = ? and h.entered_on = d), (select count(*) from "
            "segments.membership_history h where h.segment_slug = ? and h.exited_on = d) "
            "from days order by d",
            [start, day, slug, slug],
        ).fetchall()
        return rows

    def this_week(con, slug: str, day: date | None) -> dict[str, list[dict]]:
        """Who entered and who left in the 7 days up to `day`, from membership history."""
        if day is None:
            return {"entered": [], "left": []}
        out = {}
        for name, column in (("entered", "entered_on"), ("left", "exited_on")):
            out[name] = con.sql(
                f"select h.patient_id, h.case_id, p.first_name, p.last_name, h.{column} as day "
                "from segments.membership_history h left join marts.patient_features p "
                f"using (patient_id) where h.segment_slug = $slug and h.{column} > $start "
                f"and h.{column} <= $day order by h.{column} desc, p.last_name limit 50",
                params={"slug": slug, "start": day - timedelta(days=7), "day": day},
            ).pl().to_dicts()
        return out

    @app.get("/segments/{slug}", response_class=HTMLResponse)
    def segment_page(request: Request, slug: str, q: str | None = None, page_no: int = 1,
                     sort: str = "name", desc: bool = False):  # fmt: skip
        """Members on the latest day, sorted by a column (`sort`, `desc`), in pages."""
        session = signed_in(request)
        seg = visible_segment(slug, session)
        if sort not in MEMBER_SORTS:
            sort = "name"

        def both(con):
            day, frame = members_of(con, slug, q)
            return day, frame, (trend(con, slug, day) if day else []), this_week(con, slug, day)

        day, frame, days, week = read(both)
        accounts.record(state.accounts, session.user, "viewed", f"segment {slug}")
        # The first evaluation enters everyone at once: scale the chart to the days after
        # it (that day's bar is drawn full height, its number in the tooltip).
        busy = [n for n, (_, e, x) in enumerate(days) if e or x]
        later = [max(e, x) for _, e, x in days[busy[0] + 1:]] if busy else []
        peak = max(later or [max(e, x) for _, e, x in days] or [1]) or 1
        if frame.height:
            frame = frame.sort(MEMBER_SORTS[sort], descending=desc, nulls_last=True)
        pages = max(1, -(-frame.height // PAGE))
        page_no = min(max(page_no, 1), pages)
        first = (page_no - 1) * PAGE
        return page(request, "segment.html", session, segment=seg, day=day,
                    rows=frame.slice(first, PAGE).to_dicts(), total=frame.height, q=q or "",
                    page_no=page_no, pages=pages, sort=sort, desc=desc,
                    trend=days, peak=peak, week=week)  # fmt: skip

    @app.get("/segments/{slug}/members.csv")
    def export(request: Request, slug: str):
        session = signed_in(request)
        visible_segment(slug, session)
        _, frame = read(members_of, slug, None)
        accounts.record(state.accounts, session.user, "exported", f"segment {slug}")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(frame.columns)
        writer.writerows([spreadsheet_safe(v) for v in row] for row in frame.rows())
        return Response(out.getvalue(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{slug}.csv"'})  # fmt: skip

    @app.get("/segments/{slug}/explain", response_class=HTMLResponse)
    def explain_page(request: Request, slug: str, q: str | None = None,
                     patient: str | None = None):  # fmt: skip
        """Why is this patient in, or not: find them by name or id, then the rule tree."""
        from segments.explain import explain

        session = signed_in(request)
        seg = visible_segment(slug, session)
        matches: list[dict] = []
        if q and not patient:
            needle = q.strip().lower()

            def search(con):
                # A literal search: % and _ are letters here, not wildcards.
                return con.sql(
                    "select patient_id, first_name, last_name, date_of_birth from "
                    "marts.patient_features where strpos(lower(patient_id), $n) > 0 or "
                    "strpos(lower(concat_ws(' ', first_name, last_name)), $n) > 0 "
                    "order by patient_id = $q desc, last_name, first_name limit 20",
                    params={"n": needle, "q": q.strip()},
                ).pl().to_dicts()

            matches = read(search)
            exact = [m for m in matches if m["patient_id"] == q.strip()]
            if exact or len(matches) == 1:
                patient = (exact or matches)[0]["patient_id"]
        explanations = []
        if patient:
            wf = frames()
            cat = catalogue()
            day = wf.built_for or _built_day(warehouse)
            try:
                explanations = explain(seg.definition, wf, cat, day, settings.clinic_timezone,
                                       patient)  # fmt: skip
            except (WarehouseError, WrongDay) as err:
                raise HTTPException(status_code=409, detail=str(err)) from None
            accounts.record(state.accounts, session.user, "explained",
                            f"segment {slug} patient {patient}")  # fmt: skip
        return page(request, "explain.html", session, segment=seg, q=q or "",
                    matches=matches, patient=patient, explanations=explanations)

    # -- the audience builder -------------------------------------------------------

    def store():
        """One engine on the state store for the app's lifetime, migrated once (every
        request used to make its own engine and run the migrations again)."""
        import outbound.consent_events  # noqa: F401 - registers its tables
        import segments.versions  # noqa: F401 - registers its table
        from outbound.run import state_engine

        with state.lock:
            if state.store is None:
                state.store = state_engine(outbound_settings())
            return state.store

    def versions_engine():
        from segments import versions

        return store(), versions

    def editor_page(request: Request, session: accounts.Session, name: str,
                    start: str | None) -> HTMLResponse:  # fmt: skip
        from segments.versions import sha256_of

        seg = visible_segment(start, session) if start else None
        text = seg.path.read_text(encoding="utf-8") if seg else ""
        doc = read_yaml(text, str(seg.path)) if seg else dict(builder.NEW_DEFINITION)
        reason = builder.why_not_editable(seg, session.user, settings.segments_path)
        data = {
            "doc": doc, "slug": seg.slug if seg and reason is None else "",
            "base": sha256_of(text) if seg and reason is None else "",
            "saved": seg.slug if seg else "", "readonly": reason if seg else None,
            "catalogue": builder.editor_catalogue(catalogue()),
        }
        return page(request, name, session, data=data, text=text, start=start or "",
                    reason=reason, segment=seg)  # fmt: skip

    @app.get("/builder", response_class=HTMLResponse)
    def builder_page(request: Request, start: str | None = None):
        """The rule tree as a visual editor, with the live preview beside it."""
        return editor_page(request, signed_in(request), "builder.html", start)

    @app.get("/builder/text", response_class=HTMLResponse)
    def builder_text(request: Request, start: str | None = None):
        """The same definition as YAML text, with the same live preview."""
        return editor_page(request, signed_in(request), "builder_text.html", start)

    def draft_of(text: str, user: accounts.User) -> Segment:
        # A draft is owned by whoever edits it, as its saved file will be.
        raw = {"owner": user.email} | builder.read_posted(text)
        return Segment("draft", Path("draft.yaml"), parse_definition(raw, "draft", catalogue()))

    def saved_members(slug: str, day: date, wf: WarehouseFrames) -> pl.DataFrame | None:
        """The saved version's members on `day`, evaluated like the draft, remembered until
        its file or the day changes."""
        seg = library().get(slug)
        if seg is None:
            return None
        key = (slug, seg.path.stat().st_mtime_ns, day)
        with state.lock:
            if key in state.saved_counts:
                return state.saved_counts[key]
        members = evaluate(seg.definition, wf, catalogue(), day, settings.clinic_timezone)
        keys = members.select(ENTITY_KEYS[seg.definition.entity])
        with state.lock:
            if len(state.saved_counts) > 32:
                state.saved_counts.clear()
            state.saved_counts[key] = keys
        return keys

    @app.post("/builder/preview", response_class=HTMLResponse)
    async def builder_preview(request: Request):
        session = await checked(request)
        form = await form_of(request)
        # Evaluation takes a while on a large clinic: off the event loop, so that one
        # preview never holds up anybody else's request.
        return await run_in_threadpool(preview_draft, request, session, form)

    def preview_draft(request: Request, session: accounts.Session, form: FormData) -> HTMLResponse:
        text = str(form.get("definition") or "")
        saved_slug = str(form.get("saved") or "")
        try:
            seg = draft_of(text, session.user)
        except SegmentValidationError as exc:
            issues = [(i.path, i.message) for i in exc.issues]
            return page(request, "preview.html", session, issues=issues, result=None)
        wf = frames()
        try:
            day = wf.built_for or _built_day(warehouse)
            if day is None:
                raise HTTPException(status_code=503, detail="the warehouse is not built yet")
            result = preview(seg, wf, catalogue(), day, settings.clinic_timezone, caller=True)
            change = None
            if saved_slug:
                visible_segment(saved_slug, session)
                before = saved_members(saved_slug, day, wf)
                if before is not None:
                    keys = ENTITY_KEYS[seg.definition.entity]
                    after = result.members.select(keys)
                    same = before.columns == after.columns
                    change = {
                        "saved": before.height,
                        "join": after.join(before, on=keys, how="anti").height if same else None,
                        "leave": before.join(after, on=keys, how="anti").height if same else None,
                    }
        except (WarehouseError, WrongDay) as err:
            return page(request, "preview.html", session, issues=[("", str(err))], result=None)
        accounts.record(state.accounts, session.user, "previewed", f"draft {seg.definition.name}")
        hint = ("fewer than 10 members: broaden the conditions" if result.count < FEW else
                "more than 500 members: split the list into batches" if result.count > MANY
                else None)  # fmt: skip
        return page(request, "preview.html", session, issues=[], result=result, day=day,
                    hint=hint, sample=result.sample.to_dicts(), change=change,
                    columns=result.sample.columns)  # fmt: skip

    @app.post("/builder/save", response_class=HTMLResponse)
    async def builder_save(request: Request):
        """Save the draft as YAML in SEGMENTS_PATH and as the segment's next version."""
        session = await checked(request)
        form = await form_of(request)
        return await run_in_threadpool(save_draft, request, session, form)

    def save_draft(request: Request, session: accounts.Session, form: FormData) -> HTMLResponse:
        slug = str(form.get("slug") or "")
        base = str(form.get("base") or "") or None
        existing = library().get(slug) if slug else None
        engine, versions = versions_engine()

        def outcome(status: int, **context) -> HTMLResponse:
            return page(request, "saved.html", session, status=status, slug=slug, **context)

        if existing is not None and not visible_to(existing, session.user.email):
            # Someone else's private segment: its name is taken, and that is all.
            return outcome(409, problem=f"a segment named {slug!r} exists already; choose "
                           "another name")  # fmt: skip
        reason = builder.why_not_editable(existing, session.user, settings.segments_path)

        if reason is not None and (existing is not None or settings.segments_path is None):
            return outcome(409, problem=reason)
        try:
            raw = builder.read_posted(str(form.get("definition") or ""))
            # The owner is who created the segment, whatever the draft says.
            owner = existing.definition.owner if existing and base else session.user.email
            raw = {k: v for k, v in raw.items() if k != "owner"} | ({"owner": owner}
                                                                     if owner else {})
            saved = versions.save_definition(engine, settings.segments_path, slug, raw,
                                             session.user.email, base, catalogue(), library())
        except SegmentValidationError as exc:
            return outcome(422, issues=[(i.path, i.message) for i in exc.issues])
        except versions.SaveConflict as err:
            return outcome(409, problem=str(err))
        accounts.record(state.accounts, session.user, "saved",
                        f"segment {slug} version {saved.version}")  # fmt: skip
        return outcome(200, saved=saved)

    @app.get("/segments/{slug}/versions", response_class=HTMLResponse)
    def versions_page(request: Request, slug: str):
        """Who changed the segment, when, and what they changed."""
        session = signed_in(request)
        seg = visible_segment(slug, session)
        engine, versions = versions_engine()
        # Versions that were private to someone else stay theirs, and so does what they
        # changed: each version is compared with the one before it that this user may see.
        found = [v for v in versions.versions_of(engine, slug)
                 if versions.visible_version(v, session.user.email)]  # fmt: skip
        rows = [(v, versions.diff_of(found[n + 1].text if n + 1 < len(found) else "", v.text,
                                     slug)) for n, v in enumerate(found)]  # fmt: skip
        return page(request, "versions.html", session, segment=seg, rows=rows)

    # -- work lists -------------------------------------------------------------------

    def worklists():
        return read_worklists(folders(), settings.worklists_path)

    def visible_worklist(slug: str, session: accounts.Session):
        info = worklists().lists.get(slug) or api.stored_worklist(state.workflow, slug)
        if info is None or not api.visible_to(info, session.user.email):
            raise HTTPException(status_code=404, detail=f"no work list {slug!r}")
        return info

    @app.get("/worklists", response_class=HTMLResponse)
    def worklists_page(request: Request):
        session = signed_in(request)
        lists = [w for w in worklists().lists.values() if api.visible_to(w, session.user.email)]
        return page(request, "worklists.html", session,
                    lists=sorted(lists, key=lambda w: w.slug))

    def card_details(ids: list[str]) -> dict[str, tuple]:
        """Name, mobile, last visit and balance of the cards' patients, from the built
        day's marts held in memory (a board never waits on the warehouse file)."""
        if not ids or not warehouse.exists():
            return {}
        try:
            people = frames().frame("patient_features", CARD_COLUMNS)
        except WarehouseError:
            return {}
        rows = people.filter(pl.col("patient_id").is_in(pl.Series(ids).implode()))
        return {r[0]: r[1:] for r in rows.select(CARD_COLUMNS).iter_rows()}

    def days_since(at: datetime, today: date) -> int:
        """Whole days from `at` to `today`, both as the clinic's calendar has them."""
        return (today - at.astimezone(ZoneInfo(settings.clinic_timezone)).date()).days

    def colleagues(info) -> list[accounts.User]:
        """Who a card can be assigned to: active accounts allowed to see the list."""
        return [u for u in accounts.list_users(state.accounts)
                if not u.disabled and api.visible_to(info, u.email)]  # fmt: skip

    @app.get("/worklists/{slug}", response_class=HTMLResponse)
    def board(request: Request, slug: str, show: str = "all", department: str = "",
              done: int | None = None, skipped: int = 0, missing: int = 0):  # fmt: skip
        """The board; `show`: all, mine (assigned to me), unassigned, or overdue (a due
        date before today in the clinic's time zone); `department`: cards assigned to
        someone of that department."""
        from core.days import today_in

        session = signed_in(request)
        info = visible_worklist(slug, session)
        if show not in ("all", "mine", "unassigned", "overdue"):
            show = "all"
        today = today_in(settings.clinic_timezone)
        filters = {"mine": {"assignee": session.user.email}, "unassigned": {"unassigned": True},
                   "overdue": {"due_before": today}}.get(show, {})  # fmt: skip
        people_of = colleagues(info)
        everyone = accounts.list_users(state.accounts)
        departments = sorted({u.department for u in everyone if u.department})
        if department:
            filters["assignee_in"] = [u.email for u in everyone if u.department == department]
        # Each stage's first cards and every stage's count: a list of 200,000 members is
        # never read whole for a board.
        counts = api.stage_counts(state.workflow, info, user=session.user.email)
        members = [m for stage in info.spec.stages
                   for m in api.list_members(state.workflow, info, user=session.user.email,
                                             stage=stage, limit=CARDS_PER_COLUMN,
                                             in_segment_only=True, **filters)]  # fmt: skip
        ids = sorted({m.patient_id for m in members})

        people = card_details(ids)
        accounts.record(state.accounts, session.user, "viewed", f"work list {slug}")
        columns = {stage: [] for stage in info.spec.stages}
        totals = dict(counts.active)
        for m in members:
            in_stage = days_since(m.stage_since, today)
            columns.setdefault(m.stage, []).append((m, people.get(m.patient_id), in_stage))
        if filters:
            # Counts of what is shown, when filtered (up to the cards per stage).
            totals = {stage: len(cards) for stage, cards in columns.items()}
        return page(request, "board.html", session, info=info, columns=columns,
                    totals=totals, per_column=CARDS_PER_COLUMN, show=show, today=today,
                    filtered=bool(filters),
                    department=department, departments=departments, colleagues=people_of,
                    done=done if done is not None and done >= 0 else None,
                    skipped=max(skipped, 0), missing=max(missing, 0))  # fmt: skip

    @app.post("/worklists/{slug}/bulk")
    async def bulk(request: Request, slug: str):
        session = await checked(request)
        form = await form_of(request)
        return await run_in_threadpool(bulk_change, session, slug, form)

    def bulk_change(session: accounts.Session, slug: str, form: FormData) -> Response:
        """Move or assign the selected cards. Each card carries the version it was shown
        at: a card someone else changed since is left as it is, and counted. Every value
        is checked before any card changes."""
        info = visible_worklist(slug, session)
        action = str(form.get("action") or "")
        picked = [str(v) for v in form.getlist("member")]
        if action not in ("move", "assign") or not picked:
            raise HTTPException(status_code=400, detail="choose cards and Move or Assign")
        if len(picked) > MAX_BULK:
            raise HTTPException(status_code=400, detail=f"{len(picked):,} cards are selected; "
                                f"change at most {MAX_BULK:,} at once")  # fmt: skip
        cards: dict[str, int] = {}
        for value in picked:
            version, _, member_id = value.partition(":")
            if not VERSION.fullmatch(version) or not member_id:
                raise HTTPException(status_code=400, detail="a selected card is not one this "
                                    "board showed; reload the board")  # fmt: skip
            cards.setdefault(member_id, int(version))
        stage = str(form.get("stage") or "")
        assignee = str(form.get("assignee") or "") or None
        if action == "move":
            try:
                info.spec.resolve_stage(stage)
            except ValueError as err:
                raise HTTPException(status_code=400, detail=for_staff(err)) from None
        elif assignee and assignee not in {u.email for u in colleagues(info)}:
            raise HTTPException(status_code=400, detail="assign to someone who can see this list")
        done = changed_since = missing = 0
        for member_id, version in cards.items():
            try:
                if action == "move":
                    api.move(state.workflow, info, member_id, stage, session.user.email,
                             expected_version=version)  # fmt: skip
                else:
                    api.assign(state.workflow, info, member_id, assignee, session.user.email,
                               expected_version=version)  # fmt: skip
                done += 1
            except api.ConcurrentChangeError:
                changed_since += 1
            except api.MemberNotFoundError:
                missing += 1
        # Back to the board as it was filtered (only the filters a board has).
        back = parse_qs(str(form.get("back") or ""))
        kept = {k: back[k][0] for k in ("show", "department") if back.get(k)}
        query = urlencode({"done": done, "skipped": changed_since, "missing": missing, **kept})
        return RedirectResponse(f"/worklists/{slug}?{query}", status_code=303)

    @app.get("/worklists/{slug}/cards/{member_id:path}", response_class=HTMLResponse)
    def card_page(request: Request, slug: str, member_id: str):
        """One card: who it is, its stage, assignee and due date, notes, and its timeline."""
        from core.days import today_in

        session = signed_in(request)
        info = visible_worklist(slug, session)
        try:
            timeline = api.history(state.workflow, info, member_id, user=session.user.email)
            with state.workflow.connect() as conn:
                member = api.read_member(conn, slug, member_id)
        except api.MemberNotFoundError:
            raise HTTPException(status_code=404, detail=f"no card {member_id!r}") from None

        def person(con):
            if not table_exists(con, "marts", "patient_features"):
                return None
            return con.sql("select first_name, last_name, mobile, email, last_visit_date, "
                           "balance_due from marts.patient_features where patient_id = $p",
                           params={"p": member.patient_id}).pl().to_dicts()  # fmt: skip

        found = read(person) if warehouse.exists() else None
        from outbound.ledger import learned_consent_of
        consent = learned_consent_of(store(), member.patient_id)
        accounts.record(state.accounts, session.user, "viewed",
                        f"work list {slug} card {member_id}")  # fmt: skip
        today = today_in(settings.clinic_timezone)
        return page(request, "card.html", session, info=info, m=member,
                    person=found[0] if found else None, timeline=timeline,
                    in_stage=days_since(member.stage_since, today),
                    colleagues=colleagues(info), consent=consent)  # fmt: skip

    @app.post("/worklists/{slug}/cards/{member_id:path}")
    async def change_card(request: Request, slug: str, member_id: str):
        session = await checked(request)
        form = await form_of(request)
        return await run_in_threadpool(card_change, session, slug, member_id, form)

    def card_change(session: accounts.Session, slug: str, member_id: str,
                    form: FormData) -> Response:  # fmt: skip
        """A note, a due date or an assignee for one card, each at the version shown."""
        info = visible_worklist(slug, session)
        action = str(form.get("action") or "")
        version = str(form.get("version") or "")
        if not VERSION.fullmatch(version):
            raise HTTPException(status_code=400, detail="the card's version is missing; "
                                "reload the card")  # fmt: skip
        expected, by = int(version), session.user.email
        try:
            if action == "note":
                note = str(form.get("note") or "")
                if len(note) > MAX_NOTE:
                    raise ValueError(f"a note is at most {MAX_NOTE:,} characters; this one "
                                     f"has {len(note):,}")  # fmt: skip
                if CONTROL.search(note):
                    raise ValueError("a note holds control characters; type it as text")
                api.add_note(state.workflow, info, member_id, note, by)
            elif action == "due":
                api.set_due_date(state.workflow, info, member_id,
                                 due_date_of(str(form.get("due") or "")), by,
                                 expected_version=expected)  # fmt: skip
            elif action == "assign":
                assignee = str(form.get("assignee") or "") or None
                if assignee and assignee not in {u.email for u in colleagues(info)}:
                    raise ValueError("assign to someone who can see this list")
                api.assign(state.workflow, info, member_id, assignee, by,
                           expected_version=expected)  # fmt: skip
            else:
                raise ValueError("unknown change")
        except api.MemberNotFoundError:
            raise HTTPException(status_code=404, detail=f"no card {member_id!r}") from None
        except api.ConcurrentChangeError:
            raise HTTPException(status_code=409, detail="someone else changed this card "
                                "first; reload it") from None  # fmt: skip
        except ValueError as err:
            raise HTTPException(status_code=400, detail=for_staff(err)) from None
        return RedirectResponse(f"/worklists/{slug}/cards/{quote(member_id, safe='')}",
                                status_code=303)  # fmt: skip

    @app.post("/worklists/{slug}/move")
    async def move(request: Request, slug: str):
        session = await checked(request)
        form = await form_of(request)
        return await run_in_threadpool(move_card, request, session, slug, form)

    def move_card(request: Request, session: accounts.Session, slug: str,
                  form: FormData) -> Response:  # fmt: skip
        """One card to another stage, at the version the board showed."""
        info = visible_worklist(slug, session)
        member_id, stage = str(form.get("member_id") or ""), str(form.get("stage") or "")
        version = str(form.get("version") or "")
        if not VERSION.fullmatch(version):
            raise HTTPException(status_code=400, detail="the card's version is missing")
        try:
            after = api.move(state.workflow, info, member_id, stage, session.user.email,
                             expected_version=int(version))  # fmt: skip
        except api.ConcurrentChangeError:
            raise HTTPException(status_code=409, detail="someone else changed this card "
                                "first; the board has been reloaded") from None  # fmt: skip
        except (api.MemberNotFoundError, api.WorkListAccessError, ValueError) as err:
            raise HTTPException(status_code=400, detail=for_staff(err)) from None
        if request.headers.get("X-CSRF-Token"):
            return JSONResponse({"stage": after.stage, "version": after.version})
        return RedirectResponse(f"/worklists/{slug}", status_code=303)

    # -- campaigns --------------------------------------------------------------------

    def outbound_settings():
        from outbound.run import OutboundSettings

        return OutboundSettings.of(settings)

    # A wrong outbound setting (CLINIC_COUNTRY, OUTBOUND_RECIPIENT_HOURS,
    # SENDGRID_GROUP_IDS) stops the app at start, named, not a page later.
    outbound_settings()

    def visible_campaigns(session: accounts.Session):
        from outbound.run import campaign_set

        segs = {s.slug: s for s in library().segments}
        loaded = campaign_set(outbound_settings())
        mine = [c for c in loaded.campaigns
                if c.segment in segs and visible_to(segs[c.segment], session.user.email)]
        return mine

    # -- what providers tell about consent --------------------------------------------

    verifier = None
    if settings.sender.webhook_public_key:
        from sendgrid.helpers.eventwebhook import EventWebhook

        try:
            verifier = EventWebhook(settings.sender.webhook_public_key)
        except ValueError as err:
            raise ValueError("SENDGRID_WEBHOOK_PUBLIC_KEY is not an elliptic-curve public "
                             f"key ({err}); copy it again from SendGrid") from None  # fmt: skip

    def patients_whose(column: str, normalised: pl.Expr, value: str) -> list[str]:
        """The patient records whose `column`, read as `normalised`, is `value` (marts)."""
        if not warehouse.exists():
            return []
        try:
            people = frames().frame("patient_features", ["patient_id", column])
        except WarehouseError:
            return []
        return people.filter(normalised == value)["patient_id"].to_list()

    def patients_with_email(address: str) -> list[str]:
        """The patients whose email is `address` (trimmed, any case)."""
        email = pl.col("email").cast(pl.String).str.strip_chars().str.to_lowercase()
        return patients_whose("email", email, address)

    async def body_of(request: Request, limit: int) -> bytes:
        """The raw body, refused (413) past `limit` bytes before it is read whole: anyone
        can post to a webhook before its signature says who sent it."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(status_code=413, detail="the request is too large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise HTTPException(status_code=413, detail="the request is too large")
        return raw

    @app.post("/webhooks/sendgrid/events")
    async def sendgrid_events(request: Request):
        """SendGrid's Event Webhook. Authenticated by its ECDSA signature over the raw
        body (no session, no CSRF token: SendGrid has neither); anything unsigned, signed
        with another key or older than 10 minutes is refused and changes nothing."""
        import json
        import time as clock

        from outbound.consent_events import apply_events

        if verifier is None:
            raise HTTPException(status_code=404, detail="no Event Webhook is configured here")
        body = (await body_of(request, WEBHOOK_MAX_BYTES)).decode("utf-8", "replace")
        signature = request.headers.get("X-Twilio-Email-Event-Webhook-Signature", "")
        stamp = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
        fresh = stamp.isdigit() and abs(clock.time() - int(stamp)) <= WEBHOOK_MAX_AGE
        try:
            valid = fresh and bool(signature) and verifier.verify_signature(body, signature, stamp)
        except (ValueError, TypeError):  # a signature that is not base64 / DER
            valid = False
        if not valid:
            raise HTTPException(status_code=403, detail="the event batch is not signed by "
                                "SendGrid's key, or is too old")  # fmt: skip
        try:
            events = json.loads(body)
        except ValueError:
            raise HTTPException(status_code=400, detail="the body is not JSON") from None
        if not isinstance(events, list):
            raise HTTPException(status_code=400, detail="the body is not a list of events")
        engine = await run_in_threadpool(store)
        groups = {g: c for c, g in outbound_settings().group_ids.items()}
        applied = await run_in_threadpool(apply_events, engine, events, patients_with_email,
                                          None, groups, settings.complaint_rate)  # fmt: skip
        return JSONResponse(applied.__dict__)

    # -- Twilio: replies and delivery reports -----------------------------------------

    def patients_with_number(number: str) -> list[str]:
        """The patient records whose mobile is `number` (E.164)."""
        from outbound.phones import e164_expr

        mobile = e164_expr(pl.col("mobile").cast(pl.String), settings.clinic_country)
        return patients_whose("mobile", mobile, number)

    async def twilio_form(request: Request) -> dict[str, str]:
        """A Twilio webhook's form, once X-Twilio-Signature proves Twilio sent it: signed
        with the account's auth token over the URL Twilio was given (WEB_APP_URL and the
        path) and every field. Anything else is refused and changes nothing."""
        from twilio.request_validator import RequestValidator

        token, base = settings.twilio.auth_token, settings.web_app_url
        if not token or not base:
            raise HTTPException(status_code=404, detail="no Twilio webhook is configured "
                                "here (TWILIO_AUTH_TOKEN and WEB_APP_URL)")  # fmt: skip
        raw = await body_of(request, TWILIO_MAX_BYTES)
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                              max_num_fields=200)  # fmt: skip
        except (UnicodeDecodeError, ValueError):
            pairs = None
        fields = dict(pairs or [])
        if pairs is None or len(fields) != len(pairs) or any("\x00" in k + v for k, v in pairs):
            raise HTTPException(status_code=400, detail="the form is not one Twilio sends")
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature or not RequestValidator(token).validate(url, fields, signature):
            raise HTTPException(status_code=403, detail="the request is not signed by "
                                "this Twilio account")  # fmt: skip
        return fields

    def twiml(text: str | None) -> Response:
        from twilio.twiml.messaging_response import MessagingResponse

        reply = MessagingResponse()
        if text:
            reply.message(text)
        return Response(str(reply), media_type="application/xml")

    @app.post("/webhooks/twilio/inbound")
    async def twilio_inbound(request: Request):
        """A patient's reply: STOP opts the number out, START back in, HELP is answered
        (docs/consent.md). Applied once per MessageSid."""
        from outbound.phones import e164
        from outbound.twilio_events import apply_inbound

        fields = await twilio_form(request)
        if not (fields.get("MessageSid") or fields.get("SmsSid")):
            raise HTTPException(status_code=400, detail="no MessageSid in the message")
        engine = await run_in_threadpool(store)
        done = await run_in_threadpool(
            apply_inbound, engine, fields, patients_with_number,
            lambda n: e164(n, settings.clinic_country))  # fmt: skip
        clinic = settings.clinic_name or "This clinic"
        if done.duplicate:
            return twiml(None)
        kind = "WhatsApp messages" if done.channel == "whatsapp" else "text messages"
        return twiml({
            "stop": f"{clinic}: you will get no more {kind} from us. Reply START to opt "
                    "back in.",
            "start": f"{clinic}: you will get our messages again. Reply STOP to opt out.",
            "help": f"{clinic}: messages about your appointments and care. Reply STOP to opt "
                    "out, START to opt back in.",
        }.get(done.kind))  # fmt: skip

    @app.post("/webhooks/twilio/status")
    async def twilio_status(request: Request):
        """Twilio's status callback: moves the message's ledger row forward only."""
        from outbound.twilio_events import apply_status

        fields = await twilio_form(request)
        engine = await run_in_threadpool(store)
        moved = await run_in_threadpool(apply_status, engine, fields)
        return JSONResponse({"moved": moved})

    # -- one-click unsubscribe (RFC 8058) ----------------------------------------------

    def unsubscribe_of(token: str):  # noqa: ANN202 - outbound.unsubscribe.Unsubscribe
        from core.days import today_in
        from outbound.unsubscribe import BadToken, ExpiredToken, read_token

        if not settings.unsubscribe_secret:
            raise HTTPException(status_code=404, detail="no such page")
        try:
            return read_token(settings.unsubscribe_secret, token,
                              today_in(settings.clinic_timezone))  # fmt: skip
        except ExpiredToken:
            raise HTTPException(status_code=410, detail="this unsubscribe link has expired; "
                                "reply to the email or call the clinic, and they will stop "
                                "the emails") from None  # fmt: skip
        except BadToken:
            raise HTTPException(status_code=400, detail="this is not an unsubscribe link of "
                                "this clinic; check it was copied whole") from None  # fmt: skip

    # Who changes a category through the page or the one-click POST: the sources the
    # page may lift again when the patient ticks the category back.
    PAGE_SOURCES = ("preference page", "one-click unsubscribe")  # noqa: N806

    def preferences_of(found) -> dict:  # noqa: ANN001 - outbound.unsubscribe.Unsubscribe
        from outbound.categories import CATEGORIES, commercial
        from outbound.ledger import read_category_opt_outs

        left = set(read_category_opt_outs(store(), [found.patient_id])["category"].to_list())
        category = CATEGORIES.get(found.category or "")
        return {"categories": [(c.slug, c.label, c.slug not in left) for c in commercial()],
                "everything": "all" in left,
                "this": category.label if category and not category.transactional else None}

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_page(request: Request, token: str):
        """What the link in an email opens: stop this kind of message in one click, or
        choose which kinds to keep. No sign-in, nothing personal shown."""
        found = unsubscribe_of(token)
        return page(request, "unsubscribe.html", None, token=token, done=None,
                    **preferences_of(found))  # fmt: skip

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse)
    async def unsubscribe(request: Request, token: str):
        """The one-click POST a mailbox provider sends (body `List-Unsubscribe=One-Click`),
        or the page's buttons. One-click and "stop these" opt the patient out of the
        message's category (a link made before categories: of email); "all" out of every
        commercial category; "save" keeps exactly the ticked ones. Honoured from the next
        plan on, and by any run already sending. The signed token is the proof; there is
        no session or CSRF token to ask for."""
        from datetime import UTC
        from datetime import datetime as moment

        from outbound.categories import ALL, commercial
        from outbound.ledger import (
            lift_category_opt_outs,
            record_category_opt_outs,
            record_opt_out,
        )

        found = unsubscribe_of(token)
        form = await form_of(request)
        action = form.get("action") or "this"
        engine = await run_in_threadpool(store)
        now = moment.now(UTC)
        if action not in ("this", "all", "save"):
            raise HTTPException(status_code=400, detail="choose one of the page's buttons")
        if action == "this" and found.category not in {c.slug for c in commercial()}:
            # A link made before categories, or of a transactional message: what stops
            # this message is an opt-out of the channel.
            await run_in_threadpool(record_opt_out, engine, found.patient_id, found.channel,
                                    "one-click unsubscribe")  # fmt: skip
            done = "channel"
        else:
            source = "one-click unsubscribe" if action == "this" else "preference page"
            known = {c.slug for c in commercial()}
            if action == "this":
                leave, keep = {found.category or ALL}, set()
            elif action == "all":
                leave, keep = {ALL}, set()
            else:
                ticked = set(form.getlist("keep"))
                if ticked - known:
                    raise HTTPException(status_code=400, detail="not a category of this page")
                leave, keep = known - ticked, ticked | {ALL}

            def apply() -> None:
                with engine.begin() as conn:
                    for category in sorted(leave):
                        record_category_opt_outs(conn, [found.patient_id], category, source, now)
                    for category in sorted(keep):
                        lift_category_opt_outs(conn, [found.patient_id], category, PAGE_SOURCES)

            await run_in_threadpool(apply)
            done = action
        return page(request, "unsubscribe.html", None, token=token, done=done,
                    **preferences_of(found))  # fmt: skip

    @app.get("/campaigns", response_class=HTMLResponse)
    def campaigns_page(request: Request):
        """Each campaign with its status, and the plan of the built day: who would be
        messaged, and why not (a dry run: nothing is sent from here)."""
        from outbound.pauses import pause_states
        from outbound.run import make_plan, run_clock

        session = signed_in(request)
        campaigns = visible_campaigns(session)
        o = outbound_settings()
        engine = store()
        states = pause_states(engine)
        day = _built_day(warehouse)
        plan_rows, error = [], None
        if day is not None:
            clock = run_clock(day, settings.clinic_timezone, run_time=o.run_time)
            try:
                planned = make_plan(o, campaigns, clock, engine)
                names = {c.slug for c in campaigns}
                plan = planned.plan.filter(pl.col("campaign").is_in(list(names)))
                plan_rows = (plan.group_by("campaign", "decision", "reason").len()
                             .sort("campaign", "decision", "reason").to_dicts())  # fmt: skip
            except (LookupError, ValueError) as err:
                error = str(err)
        from core.days import today_in
        from outbound.ledger import ledger_by_day

        today = today_in(settings.clinic_timezone)
        since = today - timedelta(days=LEDGER_DAYS - 1)
        ledger = ledger_by_day(engine, since, today, [c.slug for c in campaigns])
        return page(request, "campaigns.html", session, campaigns=campaigns, states=states,
                    day=day, plan_rows=plan_rows, error=error, ledger=ledger,
                    ledger_days=LEDGER_DAYS)  # fmt: skip

    @app.post("/campaigns/{slug}/pause")
    async def pause(request: Request, slug: str):
        from outbound.pauses import set_paused

        session = await checked(request)
        if slug not in {c.slug for c in visible_campaigns(session)}:
            raise HTTPException(status_code=404, detail=f"no campaign {slug!r}")
        form = await form_of(request)
        if form.get("paused") not in ("true", "false"):
            raise HTTPException(status_code=400, detail="say paused=true or paused=false")
        paused = form.get("paused") == "true"
        set_paused(store(), slug, paused, session.user.email)
        accounts.record(state.accounts, session.user, "paused" if paused else "resumed",
                        f"campaign {slug}")  # fmt: skip
        return RedirectResponse("/campaigns", status_code=303)

    return app


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _stamp(path: Path) -> tuple[int, ...]:
    """What changes when a file is written (a replaced file is a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return (0, -1)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def due_date_of(text: str) -> date | None:
    """A due date as the card's date box sends it (YYYY-MM-DD), or None to clear it."""
    if not text:
        return None
    try:
        due = date.fromisoformat(text) if DAY_TEXT.fullmatch(text) else None
    except ValueError:
        due = None
    if due is None or not DUE_RANGE[0] <= due <= DUE_RANGE[1]:
        raise ValueError(f"{text[:20]!r} is not a due date; pick one between "
                         f"{DUE_RANGE[0]} and {DUE_RANGE[1]} (YYYY-MM-DD)")  # fmt: skip
    return due


def for_staff(err: Exception) -> str:
    """A workflow error's message without the CLI's advice, which is not for the board."""
    return str(err).split("; `audiences")[0][:300]


def spreadsheet_safe(value: object) -> object:
    """A cell a spreadsheet will not run: text starting like a formula gets a leading
    apostrophe (`=HYPERLINK(...)` is shown, never followed)."""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def _built_day(warehouse: Warehouse) -> date | None:
    try:
        with warehouse.connect(read_only=True) as con:
            return built_for(con)[0]
    except WarehouseBusy:
        return None
