"""The order in which queued jobs of one lane start: higher priority first, then round-robin by user
(the user served least recently goes first), then oldest job first. A user with ten queued jobs
therefore delays another user's single job by at most one job, not ten."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class QueuedJob(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def priority(self) -> int: ...


J = TypeVar("J", bound=QueuedJob)


def fair_order(queued: Sequence[J], last_start: dict[int, float]) -> list[J]:
    """Simulates the scheduler picking one job after another, each pick counting as that user's most
    recent start. `last_start`: when each user last had a job started in this lane (absent = never)."""
    served = dict(last_start)
    pending = sorted(queued, key=lambda job: job.id)
    order: list[J] = []
    clock = max(served.values(), default=0.0)
    while pending:
        top = max(job.priority for job in pending)
        candidates = [job for job in pending if job.priority == top]
        chosen = min(candidates, key=lambda job: (served.get(job.user_id, float("-inf")), job.id))
        order.append(chosen)
        pending.remove(chosen)
        clock += 1.0
        served[chosen.user_id] = clock
    return order
