"""Training plans shown with a Start button (/lora train): what the button starts, however late it is pressed,
until it is used once or maintenance drops plans older than [retention] training_plans_days."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from storage.db import Database


@dataclass(frozen=True)
class TrainingPlanRow:
    token: str
    user_id: int
    project_id: int
    overrides: dict[str, str]
    family: str | None
    created_at: float


async def insert(db: Database, token: str, *, user_id: int, project_id: int, overrides: dict[str, str],
                 family: str | None) -> None:
    await db.execute("INSERT INTO training_plans (token, user_id, project_id, overrides, family, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (token, user_id, project_id, json.dumps(overrides), family, time.time()))


async def get(db: Database, token: str) -> TrainingPlanRow | None:
    row = await db.fetchone("SELECT token, user_id, project_id, overrides, family, created_at FROM training_plans "
                            "WHERE token = ?", (token,))
    return TrainingPlanRow(str(row[0]), int(row[1]), int(row[2]), json.loads(row[3]), row[4], float(row[5])) \
        if row else None


async def delete(db: Database, token: str) -> bool:
    """False when it was already gone: of two clicks on one Start button, only one starts the training."""
    return await db.execute("DELETE FROM training_plans WHERE token = ?", (token,)) > 0


async def put_back(db: Database, plan: TrainingPlanRow) -> None:
    """A plan whose start was refused (e.g. the project has no pictures any more): its button keeps working."""
    await db.execute("INSERT OR IGNORE INTO training_plans (token, user_id, project_id, overrides, family, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (plan.token, plan.user_id, plan.project_id,
                                                   json.dumps(plan.overrides), plan.family, plan.created_at))


async def delete_older_than(db: Database, cutoff: float) -> int:
    return await db.execute("DELETE FROM training_plans WHERE created_at < ?", (cutoff,))
