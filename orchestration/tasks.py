"""After a send run: staff tasks onto their work-list cards, and out to the task system.

The one place that joins the two (outbound makes tasks, workflow holds the cards), for
the `audiences campaigns send` command and the pipeline's send step alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from core.state_store import migrate
from outbound.tasks import Delivery, TaskWebhook, mark_on_card, tasks_not_on_cards
from workflow import store as workflow_store
from workflow.api import TasksOnCards, put_tasks_on_cards

# Who the cards say made the change.
TASKS_ACTOR = "campaign tasks"


@dataclass
class TasksDone:
    cards: TasksOnCards
    webhook: Delivery | None


def after_send(engine: Engine, webhook: TaskWebhook | None) -> TasksDone:
    migrate(engine, [workflow_store.COMPONENT])
    pending = tasks_not_on_cards(engine)
    items = [dict(task_id=t.task_id, segment_slug=t.segment_slug, member_id=t.member_id,
                  assignee=t.assignee, due_date=t.due_date, note=t.note, by=TASKS_ACTOR)
             for t in pending]  # fmt: skip
    cards, done = put_tasks_on_cards(engine, items)
    mark_on_card(engine, done)
    return TasksDone(cards, webhook.deliver(engine) if webhook is not None else None)
