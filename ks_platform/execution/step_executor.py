"""What the Docker and SLURM executors share: a step executor that tells its handler when steps and runs end and
gives back the concurrency slots of an ended run, and the check that the instance storage can be reached from other
machines."""

from __future__ import annotations

from typing import Any, Protocol

import dagster as dg
from dagster import Field, IntSource, Permissive, StringSource

from ks_platform.core.errors import PlatformConfigError
from ks_platform.dagster_internals import (
    DagsterEvent,
    EngineEventData,
    RetryMode,
    StepDelegatingExecutor,
    StepHandler,
    get_retries_config,
)


def executor_config_schema(
    file_key: str, file_description: str, inline_key: str, inline_description: str, max_concurrent_description: str
) -> dict[str, Any]:
    """Run config of a placing executor: its part of the deployment as a file or inline, retries, and how many steps
    of one run at a time."""
    return {
        file_key: Field(StringSource, is_required=False, description=file_description),
        inline_key: Field(Permissive(), is_required=False, description=inline_description),
        "retries": get_retries_config(),
        "max_concurrent": Field(IntSource, is_required=False, description=max_concurrent_description),
    }


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
            release_run_slots(plan_context)


def release_run_slots(plan_context: Any) -> list[str]:
    """Give back the concurrency slots the run still holds once its steps are stopped; the pools freed.

    Dagster frees a step's slot when the executor hears the step end; a step stopped because the run was terminated
    never reports, so its slot (e.g. the ``kilosort`` pool's only one) stayed claimed by the ended run and the next
    sort waited "blocked by limit for pool kilosort" until freed by hand (``run_monitoring``'s
    ``free_slots_after_run_end_seconds`` in the instance configs is the backstop for a run worker that died).
    """
    instance, run_id = plan_context.instance, plan_context.run_id
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or instance.run_will_resume(run_id):
        return []
    if run_id not in storage.get_concurrency_run_ids():
        return []
    pools = sorted(
        {
            f"{pool} ({claim.step_key})"
            for pool in storage.get_concurrency_keys()
            for claim in storage.get_concurrency_info(pool).claimed_slots
            if claim.run_id == run_id
        }
    )
    storage.free_concurrency_slots_for_run(run_id)
    DagsterEvent.engine_event(
        plan_context,
        f"Gave back the concurrency slots this run still held: {', '.join(pools) or 'queue entries only'}",
        EngineEventData(metadata={"pools": ", ".join(pools)}),
    )
    return pools


def require_shared_storage(instance: dg.DagsterInstance, executor: str, where: str) -> None:
    """Steps on other machines (``where``) write events to the instance: SQLite files cannot be shared with them."""
    storage = type(instance.run_storage).__name__
    if "Sqlite" in storage:
        raise PlatformConfigError(
            f"{instance.root_directory}/dagster.yaml: the instance uses {storage}, which {where} cannot share. "
            f"Fix: use PostgreSQL instance storage (deploy/dagster.postgres.yaml) for the {executor}"
        )
