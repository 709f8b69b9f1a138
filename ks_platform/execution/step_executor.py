"""What the Docker and SLURM executors share: a step executor that tells its handler when steps and runs end, and
the check that the instance storage can be reached from other machines."""

from __future__ import annotations

from typing import Protocol

import dagster as dg
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.step_delegating import StepDelegatingExecutor
from dagster._core.executor.step_delegating.step_handler.base import StepHandler

from ks_platform.core.errors import PlatformConfigError


class FinishingStepHandler(Protocol):
    def finish_step(self, step_key: str, failed: bool = False) -> None: ...

    def finish_run(self) -> None: ...


class FinishingStepExecutor(StepDelegatingExecutor):
    """``StepDelegatingExecutor`` that also tells the handler when a step ends and when the run ends."""

    def __init__(
        self, handler: StepHandler, retries: RetryMode, poll_seconds: float, max_concurrent: int | None = None
    ) -> None:
        super().__init__(
            handler,
            retries=retries,
            check_step_health_interval_seconds=max(1, int(poll_seconds)),
            sleep_seconds=0.5,
            max_concurrent=max_concurrent,
        )
        self.handler = handler

    def execute(self, plan_context, execution_plan):  # type: ignore[override]
        handler: FinishingStepHandler = self.handler  # type: ignore[assignment]
        try:
            for event in super().execute(plan_context, execution_plan):
                yield event
                if event.step_key and (event.is_step_success or event.is_step_failure or event.is_step_up_for_retry):
                    handler.finish_step(event.step_key, failed=not event.is_step_success)
        finally:
            handler.finish_run()


def require_shared_storage(instance: dg.DagsterInstance, executor: str, where: str) -> None:
    """Steps on other machines (``where``) write events to the instance: SQLite files cannot be shared with them."""
    storage = type(instance.run_storage).__name__
    if "Sqlite" in storage:
        raise PlatformConfigError(
            f"{instance.root_directory}/dagster.yaml: the instance uses {storage}, which {where} cannot share. "
            f"Fix: use PostgreSQL instance storage (deploy/dagster.postgres.yaml) for the {executor}"
        )
