"""The GPU-memory rule as the sorter applies it: a user's batch_size/clear_cache always win, then the executor's
plan, then the free-memory rule (on GPUs only). BackendInfo values are what detect_backend reports on such hosts."""

from __future__ import annotations

from ks_platform.core.hardware import (
    DEFAULT_BATCH_SIZE,
    MIN_BATCH_SIZE,
    BackendInfo,
    detect_backend,
    plan_memory,
    recommended_batch_size,
)
from ks_platform.core.names import BATCH_SIZE_ENV
from ks_platform.core.settings import effective_settings
from ks_platform.core.sorting import memory_plan_for

GIB = 1024**3


def laptop_rocm(free_bytes: int = 1 * GIB) -> BackendInfo:
    """An AMD laptop GPU with 1 GiB free, as detect_backend('rocm') reports it."""
    return BackendInfo(
        "rocm", "cuda:0", "AMD Radeon 680M", 2 * GIB, free_bytes, "2.5.1+rocm6.2", None, "6.2.41133", gfx_arch="gfx1035"
    )


def test_free_memory_rule_on_a_small_gpu_cuts_batch_and_clears_cache():
    plan = plan_memory(laptop_rocm(), 384)
    assert plan.batch_size == recommended_batch_size(1 * GIB, 384) and MIN_BATCH_SIZE < plan.batch_size <= 5_000
    assert plan.clear_cache is True and "GiB free" in plan.reason
    big = plan_memory(laptop_rocm(70 * GIB), 384)
    assert big.batch_size == DEFAULT_BATCH_SIZE and big.clear_cache is False


def test_user_override_always_wins_over_rule_and_executor():
    info = laptop_rocm()
    plan = plan_memory(info, 384, user_batch_size=40_000, planned_batch_size=8_000)
    assert plan.batch_size == 40_000 and "parameter set" in plan.reason
    assert plan.clear_cache is True  # the user chose the batch, not clear_cache: memory is tight, so it is on
    assert plan_memory(info, 384, user_clear_cache=False).clear_cache is False  # rule would clear; user says no
    assert plan_memory(info, 384, planned_batch_size=8_000).batch_size == 8_000  # executor beats the rule


def test_cpu_keeps_kilosorts_defaults_even_with_an_executor_plan():
    cpu = detect_backend("cpu")
    plan = plan_memory(cpu, 384, planned_batch_size=8_000)
    assert (plan.batch_size, plan.clear_cache) == (DEFAULT_BATCH_SIZE, False)


def test_sorter_reads_user_layers_and_executor_env(monkeypatch):
    info = laptop_rocm()
    session = effective_settings(384, 30000.0, "neuropixels", {"batch_size": 50_000, "clear_cache": False})
    monkeypatch.setenv(BATCH_SIZE_ENV, "8000")
    assert memory_plan_for(info, session, 384).batch_size == 50_000  # the session file wins over the executor
    platform_layer = effective_settings(384, 30000.0, "neuropixels", {}, platform_defaults={"batch_size": 20_000})
    assert memory_plan_for(info, platform_layer, 384).batch_size == 20_000  # any layer counts as the user's choice
    plain = effective_settings(384, 30000.0, "neuropixels", {})
    assert memory_plan_for(info, plain, 384).batch_size == 8_000
    monkeypatch.delenv(BATCH_SIZE_ENV)
    assert memory_plan_for(info, plain, 384).batch_size == recommended_batch_size(1 * GIB, 384)


def test_rocm_hint_suggests_the_family_target_torch_was_built_for():
    """Inputs as torch reports them: gcnArchName of the device and torch.cuda.get_arch_list() of a ROCm 6 wheel."""
    from ks_platform.core.hardware import gfx_override_hint, parse_gfx

    rocm6_wheel = ["gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx1030", "gfx1100"]
    hint = gfx_override_hint("gfx1035", rocm6_wheel)  # Radeon 680M laptop (RDNA2 APU)
    assert "HSA_OVERRIDE_GFX_VERSION=10.3.0" in hint and "gfx1030" in hint
    assert "HSA_OVERRIDE_GFX_VERSION=11.0.0" in gfx_override_hint("gfx1103:xnack-", rocm6_wheel)  # Radeon 780M
    assert "HSA_OVERRIDE_GFX_VERSION=9.0.0" in gfx_override_hint("gfx90c", rocm6_wheel)  # Vega APU → gfx900
    assert (
        gfx_override_hint("gfx1030", rocm6_wheel) is None
        and gfx_override_hint("gfx90a:sramecc+:xnack-", rocm6_wheel) is None
    )
    assert gfx_override_hint(None, rocm6_wheel) is None
    wrong = gfx_override_hint("gfx1035", rocm6_wheel, current_override="11.0.0")
    assert "is set but does not name one of them" in wrong and "10.3.0" in wrong
    assert "cannot help" in gfx_override_hint("gfx803", rocm6_wheel)  # Polaris: no same-family target
    assert parse_gfx("gfx90a") == (9, 0, 10) and parse_gfx("sm_90") is None
