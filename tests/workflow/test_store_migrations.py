"""The workflow tables' migrations bring an older state store up to date."""

from __future__ import annotations

import sqlalchemy as sa


def test_a_store_made_before_the_stage_count_index_gets_it_and_keeps_its_rows(tmp_path):
    from core.state_store import connect_state, migrate
    from workflow import store

    engine = connect_state(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        # What versions 1 and 2 made: the tables without the new index.
        store.metadata.create_all(conn, tables=[store.lists, store.members, store.events])
        conn.execute(sa.text("drop index ix_workflow_members_stage_left"))
        conn.execute(sa.text(
            "create table if not exists schema_migrations (component varchar(64), version "
            "integer, description varchar(200), applied_at timestamp, "
            "primary key (component, version))"))  # fmt: skip
        for version in (1, 2):
            conn.execute(sa.text("insert into schema_migrations values ('workflow', :v, 'x', "
                                 "'2026-01-01')"), {"v": version})  # fmt: skip
    applied = migrate(engine, ["workflow"])
    assert ("workflow", 3) in applied and ("workflow", 4) in applied
    names = {i["name"] for i in sa.inspect(engine).get_indexes("workflow_members")}
    assert "ix_workflow_members_stage_left" in names
    # Version 4: the table of what each list's last complete sync was made from.
    assert sa.inspect(engine).has_table("workflow_sync_inputs")
    # A store made now has it from version 1; the migration then changes nothing.
    fresh = connect_state(f"sqlite:///{tmp_path / 'new.db'}")
    migrate(fresh, ["workflow"])
    assert "ix_workflow_members_stage_left" in {
        i["name"] for i in sa.inspect(fresh).get_indexes("workflow_members")}
