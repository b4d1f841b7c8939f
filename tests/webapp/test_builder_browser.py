"""The visual audience builder in a real headless Chromium: a nested segment built by
mouse and by keyboard, saved, and counted again by `audiences preview` of its YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.webapp.conftest import DAY, DESK, shipped
from tests.webapp.test_browser import CHROMIUM, browser, server, signed_in_page  # noqa: F401

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium on this machine (`apt-get install chromium`; .ci/run installs it)",
)

# The segment both tests build: active patients whose last category was physio or massage,
# seen at least twice in the last year, with nothing booked.
EXPECTED = {
    "include": {"match": "all", "conditions": [
        {"field": "status", "op": "eq", "value": "active"},
        {"match": "any", "conditions": [
            {"field": "last_appointment_category", "op": "eq", "value": "Physio"},
            {"field": "last_appointment_category", "op": "eq", "value": "Massage"},
        ]},
        {"events": "appointments",
         "where": {"match": "all", "conditions": [
             {"field": "status", "op": "eq", "value": "attended"}]},
         "within": {"from": "-12 months", "to": "today"},
         "count": {"op": "gte", "value": 2}},
    ]},
    "exclude": {"match": "any", "conditions": [
        {"field": "next_appointment_at", "op": "is_not_null"}]},
}  # fmt: skip


def settled(page) -> None:
    """Wait until the preview shows the tree as it is on screen now."""
    page.wait_for_selector("#builder:not([data-pending])", state="attached", timeout=15_000)


def count_on(page) -> int:
    settled(page)
    return int(page.inner_text("#count").replace(",", ""))


def cli_count(capsys, path: Path) -> int:
    from clinic_audiences.cli import main

    capsys.readouterr()
    assert main(["preview", str(path), "--as-of", DAY.isoformat()]) == 0
    return int(capsys.readouterr().out.split("members: ")[1].split()[0])


def root(page, which: str = "include"):
    return page.locator(f".root-{which} > .group")


def last_node(group):
    return group.locator(":scope > .conditions > li.node").last


def set_field(node, field: str, op: str | None = None, value: str | None = None) -> None:
    node.locator(":scope > select.field").select_option(field)
    if op:
        node.locator(":scope > .op-value > select.op").select_option(op)
    if value is not None:
        node.locator(":scope > .op-value input").first.fill(value)


def pinned(page, node):
    """The same node wherever it moves (every node has its own data-node number)."""
    return page.locator(f"li.node[data-node='{node.get_attribute('data-node')}']")


def drag_into(page, node, group) -> None:
    """Drag `node` by its handle to the end of `group`, following the group on screen as
    the tree shifts under the pointer, as a hand does; a hand that lets go in the wrong
    place (a busy machine renders a step late) picks the condition up and tries again."""
    node_id = node.get_attribute("data-node")
    inside = group.locator(f':scope > .conditions > li.node[data-node="{node_id}"]')
    last = group.locator(":scope > .conditions > li.node").last
    for _ in range(3):
        handle = page.locator(f'li.node[data-node="{node_id}"] > .handle').bounding_box()
        page.mouse.move(handle["x"] + 5, handle["y"] + 5)
        page.mouse.down()
        page.mouse.move(handle["x"] + 5, handle["y"] - 10, steps=5)
        for _ in range(12):
            if last.get_attribute("data-node") == node_id:
                break
            box = last.bounding_box()
            page.mouse.move(box["x"] + 40, box["y"] + box["height"] * 0.85, steps=4)
        page.mouse.up()
        if inside.count() == 1:
            return
    raise AssertionError(f"condition {node_id} could not be dragged into the group")


def build_by_mouse(page) -> None:
    """Every step a click, a choice in a list or typing into a box; one drag between groups."""
    page.fill("#meta-name", "Physio or massage regulars, by mouse")
    include = root(page)
    top = include.locator(":scope > .conditions > li.node")
    # The first condition is there already: status is active.
    set_field(top.first, "status", "eq", "active")
    include.locator(":scope > .group-foot .add-group").click()
    nested = pinned(page, top.nth(1)).locator(":scope > .group")
    set_field(last_node(nested), "last_appointment_category", "eq", "Physio")
    # Massage is added at the top level and dragged into the nested group by its handle.
    include.locator(":scope > .group-foot .add-condition").click()
    massage = pinned(page, top.nth(2))
    set_field(massage, "last_appointment_category", "eq", "Massage")
    drag_into(page, massage, nested)
    include.locator(":scope > .group-foot .add-events-condition").click()
    events = pinned(page, top.last)
    events.locator(".add-where").click()
    where = events.locator(".where > .group")
    set_field(last_node(where), "status", "eq", "attended")
    events.locator(".use-within").check()
    events.locator(".count-value input").fill("2")
    page.click(".add-exclude")
    set_field(last_node(root(page, "exclude")), "next_appointment_at", "is_not_null")


def build_by_keyboard(page) -> None:
    """No mouse: focus moves with Tab from the control before, buttons are pressed with
    Enter, lists are chosen by typing, conditions move with the arrow keys on ⠿."""
    kb = page.keyboard
    page.focus("#meta-name")
    kb.press("Control+A")
    kb.type("Physio or massage regulars, by keyboard")
    include = root(page)

    def press(locator) -> None:
        locator.focus()
        kb.press("Enter")

    def choose(select, value: str) -> None:
        # A closed list's own keys: Home, then ↓ to the wanted option.
        n = select.evaluate("(s, v) => [...s.options].findIndex(o => o.value === v)", value)
        assert n >= 0, value
        select.focus()
        kb.press("Home")
        for _ in range(n):
            kb.press("ArrowDown")

    def field_node(node, field: str, op: str | None, value: str | None) -> None:
        choose(node.locator(":scope > select.field"), field)
        if op:
            choose(node.locator(":scope > .op-value > select.op"), op)
        if value is not None:
            node.locator(":scope > .op-value input").first.focus()
            kb.press("Control+A")
            kb.type(value)

    # In the order they are made: [status, Physio, Massage, group], then moved by keys.
    press(include.locator(":scope > .group-foot .add-condition"))
    field_node(last_node(include), "last_appointment_category", "eq", "Physio")
    press(include.locator(":scope > .group-foot .add-condition"))
    field_node(last_node(include), "last_appointment_category", "eq", "Massage")
    press(include.locator(":scope > .group-foot .add-events-condition"))
    events = pinned(page, last_node(include))
    press(events.locator(".add-where"))
    field_node(last_node(events.locator(".where > .group")), "status", "eq", "attended")
    events.locator(".use-within").focus()
    kb.press("Space")
    events.locator(".count-value input").focus()
    kb.press("Control+A")
    kb.type("2")
    press(include.locator(":scope > .group-foot .add-condition"))
    field_node(last_node(include), "next_appointment_at", "is_not_null", None)
    # The booked-appointment condition goes to the exclusion: ← from the top level.
    press(last_node(include).locator(":scope > .handle"))  # Enter on ⠿ does nothing
    kb.press("ArrowLeft")
    # A new group goes up to second place with ↑ (it was made last), takes Physio and
    # Massage with →, and loses the condition it was made with.
    press(include.locator(":scope > .group-foot .add-group"))
    group = pinned(page, last_node(include))
    first = pinned(page, group.locator(":scope > .group > .conditions > li.node"))
    group.locator(":scope > .handle").focus()
    for _ in range(3):  # [status, Physio, Massage, events, group] → [status, group, ...]
        kb.press("ArrowUp")
    conditions = include.locator(":scope > .conditions > li.node")
    for _ in range(2):
        conditions.nth(2).locator(":scope > .handle").focus()
        kb.press("ArrowRight")
    press(first.locator(":scope > .remove"))
    choose(group.locator(":scope > .group > .group-head .match"), "any")


def saved_file(page, settings, slug: str) -> Path:
    page.click("#save-button")
    page.wait_for_selector("#save-result .saved")
    assert f"Saved {slug} as version 1" in page.inner_text("#save-result")
    return settings.segments_path / f"{slug}.yaml"


@pytest.mark.parametrize("how", ["mouse", "keyboard"])
def test_a_nested_segment_built_by_mouse_or_keyboard_counts_as_audiences_preview_of_its_yaml(
    browser, server, settings, capsys, how  # noqa: F811
):
    page = signed_in_page(browser, server, DESK)
    page.goto(f"{server}/builder")
    (build_by_mouse if how == "mouse" else build_by_keyboard)(page)
    shown = count_on(page)
    slug = f"physio-or-massage-regulars-by-{how}"
    assert page.input_value("#slug") == slug  # the file name follows the name
    path = saved_file(page, settings, slug)
    try:
        saved = yaml.safe_load(path.read_text())
        # Where in the any-group the dragged condition landed does not change what it
        # means (a hand lets go a few pixels either way): compared as a set.
        nested = saved["include"]["conditions"][1]["conditions"]
        nested.sort(key=lambda c: c["value"], reverse=True)
        assert {k: saved[k] for k in ("include", "exclude")} == EXPECTED
        assert saved["owner"] == DESK and saved["visibility"] == "private"
        assert shown == cli_count(capsys, path)
        assert shown > 0
    finally:
        path.unlink()
    assert page.errors == []


def test_every_shipped_definition_opened_in_the_editor_means_the_same_thing(
    browser, server, settings  # noqa: F811
):
    from segments.field_catalogue import load_catalogue
    from segments.validation import parse_definition, read_segment_file

    catalogue = load_catalogue()
    page = signed_in_page(browser, server, DESK)
    files = sorted(shipped("x").parent.glob("*.yaml"))
    assert len(files) >= 10
    # Hand-written files with values a form shows differently than they are written.
    odd = settings.segments_path / "odd-values.yaml"
    odd.write_text(ODD)
    try:
        for path in [*files, odd]:
            raw = read_segment_file(path)
            if raw.get("visibility") == "private":
                continue  # not DESK's; its owner's editor is the same page
            page.goto(f"{server}/builder?start={path.stem}")
            settled(page)
            drawn = json.loads(page.input_value("#definition"))
            assert parse_definition(drawn, path.name, catalogue) == parse_definition(
                raw, path.name, catalogue), path.name
    finally:
        odd.unlink()
    assert page.errors == []


ODD = """\
name: yes
tags: [a, on]
include:
  match: any
  conditions:
    - {field: status, op: eq, value: "act\\nive"}
    - {field: city, op: in, value: ["Surry Hills, NSW", Redfern]}
    - {field: sex, op: eq, value: yes}
    - {field: first_visit_date, op: gte, value: 2024-01-01}
    - {field: location, op: within_km, value: {lat: -33.87, lon: 151.21, km: 5}}
    - events: appointments
      within: {to: "-1 year"}
      count: {op: between, value: [2, 5]}
"""


def test_the_change_against_the_saved_version_and_a_mistake_at_its_condition(
    browser, server, settings, capsys, tmp_path  # noqa: F811
):
    import duckdb

    from clinic_audiences.cli import main

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        saved = con.execute("select count(*) from segments.membership where segment_slug = "
                            "'lapsed-physio-6-12mo'").fetchall()[0][0]  # fmt: skip
    assert saved > 0
    page = signed_in_page(browser, server, DESK)
    page.goto(f"{server}/builder?start=lapsed-physio-6-12mo")
    settled(page)
    assert page.inner_text("#change") == (
        f"Saved version: {saved:,} · 0 would join · 0 would leave")
    # Physio → Massage: the two lists share nobody, so every saved member leaves and every
    # member of the draft joins.
    first = root(page).locator(":scope > .conditions > li.node").first
    first.locator(":scope > .op-value input").fill("Massage")
    now = count_on(page)
    assert page.inner_text("#change") == (
        f"Saved version: {saved:,} · {now:,} would join · {saved:,} would leave")
    # A date written as nobody can read it: the message of `audiences validate`, at the
    # condition it concerns.
    dates = root(page).locator(":scope > .conditions > li.node").nth(1)
    dates.locator(".date-value select").first.select_option("text")
    dates.locator(".date-value input[type=text]").first.fill("next tuesday")
    settled(page)
    shown = dates.locator(":scope > .issue").inner_text()
    draft = yaml.safe_load(shipped("lapsed-physio-6-12mo").read_text())
    draft["include"]["conditions"][1]["value"][0] = "next tuesday"
    path = tmp_path / "draft.yaml"
    path.write_text(yaml.safe_dump(draft))
    capsys.readouterr()
    assert main(["validate", str(path)]) != 0
    expected = capsys.readouterr().out.splitlines()[0].split(": ", 2)[2]
    assert shown == expected
    assert "include.conditions[1].value[0]" in page.inner_text("#preview .issues")
    assert page.errors == []
