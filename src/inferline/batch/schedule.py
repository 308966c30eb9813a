"""When a batch starts: at once, or in the cleanest window of the carbon forecast that meets its deadline.

The run time is estimated from measured throughput (the last finished batch on the same model, else
batch.carbon.default_lines_per_s); energy is that time at batch.carbon.power_watts, and gCO2e is energy
times the forecast intensity, for the chosen window and for starting at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inferline.batch.carbon import choose_window, energy_kwh, load_forecast, mean_intensity
from inferline.config import CarbonConfig
from inferline.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_s(completion_window: str) -> float:
    """Seconds in a completion window: "24h" (OpenAI's only value), or any count of s, m, h or d."""
    match = _WINDOW.match(completion_window.strip())
    if match is None or int(match.group(1)) == 0:
        raise InvalidRequestError(
            f"completion_window {completion_window!r} is not a duration: use 24h (or e.g. 30m, 2d)",
            "completion_window",
        )
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def is_carbon_aware(metadata: dict[str, Any]) -> bool:
    return str(metadata.get("carbon_aware", "")).lower() in ("true", "1", "yes")


def deadline_s(metadata: dict[str, Any], expires_at: float) -> float:
    """metadata.deadline (ISO 8601, UTC unless it says otherwise, or Unix seconds), never past expiry."""
    given = metadata.get("deadline")
    if given is None:
        return expires_at
    try:
        moment = float(given)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(str(given).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequestError(
                f"metadata.deadline {given!r} is neither ISO 8601 (2030-01-31T06:00:00Z) nor Unix seconds",
                "metadata.deadline",
            ) from None
        moment = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return min(moment, expires_at)


@dataclass(frozen=True)
class Start:
    at_s: float
    """When to start (Unix seconds); now or later."""
    report: dict[str, Any] | None
    """The batch's `carbon` field; None for a batch that did not ask to be carbon-aware."""


async def plan_start(
    config: CarbonConfig,
    metadata: dict[str, Any],
    num_lines: int,
    lines_per_s: float | None,
    now_s: float,
    expires_at: float,
) -> Start:
    if not is_carbon_aware(metadata):
        return Start(now_s, None)
    deadline = deadline_s(metadata, expires_at)
    measured = lines_per_s is not None
    run_s = num_lines / (lines_per_s if lines_per_s is not None else config.default_lines_per_s)
    kwh = energy_kwh(run_s, config.power_watts)
    report: dict[str, Any] = {
        "forecast": config.forecast,
        "deadline": int(deadline),
        "estimated_run_s": round(run_s, 3),
        "throughput_lines_per_s": lines_per_s if measured else config.default_lines_per_s,
        "throughput_measured": measured,
        "estimated_energy_kwh": kwh,
    }
    if config.forecast is None:
        report["note"] = "no carbon forecast is configured (batch.carbon.forecast): started at once"
        return Start(now_s, report)
    try:
        slots = await asyncio.to_thread(load_forecast, config.forecast)
    except InvalidRequestError as error:
        logger.warning("carbon-aware batch starts at once: %s", error)
        report["note"] = f"the carbon forecast could not be read ({error}): started at once"
        return Start(now_s, report)
    window = choose_window(slots, now_s, deadline, run_s)
    at_once_g = mean_intensity(slots, now_s, now_s + run_s)
    report |= {
        "window_start": int(window.start_s),
        "window_end": int(window.end_s),
        "intensity_gco2e_per_kwh": round(window.g_per_kwh, 3),
        "estimated_gco2e": kwh * window.g_per_kwh,
        "at_once_intensity_gco2e_per_kwh": round(at_once_g, 3),
        "at_once_gco2e": kwh * at_once_g,
        "note": "started at once: no later window is cleaner and meets the deadline"
        if window.start_s == now_s
        else "waiting for the cleanest window that meets the deadline",
    }
    return Start(window.start_s, report)


def measured(report: dict[str, Any], cpu_s: float, power_watts: float) -> dict[str, Any]:
    """The report with the run's measured CPU time, energy and (at the window's intensity) gCO2e."""
    kwh = energy_kwh(cpu_s, power_watts)
    report = {**report, "measured_cpu_s": round(cpu_s, 3), "measured_energy_kwh": kwh}
    if "intensity_gco2e_per_kwh" in report:
        report["measured_gco2e"] = kwh * report["intensity_gco2e_per_kwh"]
    return report
