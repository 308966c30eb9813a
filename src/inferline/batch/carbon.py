"""Carbon-aware start times: read a carbon-intensity forecast and pick the cleanest window that still
meets the batch's deadline, given how long it is expected to run.

Two forecast shapes are read, from a file or an http(s) URL: the Green Software Foundation Carbon Aware
SDK's `/emissions/forecasts/current` (a list of forecasts, each with `forecastData` points of
`timestamp`, `duration` in minutes and `value` in gCO2e/kWh) and WattTime v3's `/v3/forecast` (`data`
points of `point_time` and `value`, `meta.data_point_period_seconds`, units lbs CO2/MWh or gCO2e/kWh).
A window is scored by the time-weighted mean intensity over the run; candidate starts are now and every
forecast point's start. Past the forecast's end the last point's intensity is assumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from inferline.errors import InvalidRequestError

LBS_PER_MWH_TO_G_PER_KWH = 0.45359237
"""1 lb = 453.59237 g and 1 MWh = 1000 kWh."""
JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Slot:
    start_s: float
    end_s: float
    g_per_kwh: float


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    g_per_kwh: float
    """Mean forecast intensity over the run."""


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_forecast(document: Any, source: str) -> list[Slot]:
    """The forecast's points, in time order, from either shape."""
    try:
        if isinstance(document, dict) and "data" in document:  # WattTime v3
            meta = document.get("meta") or {}
            period_s = float(meta.get("data_point_period_seconds", 300))
            units = str(meta.get("units", "lbs_co2_per_mwh"))
            scale = LBS_PER_MWH_TO_G_PER_KWH if units.startswith("lbs") else 1.0
            slots = [
                Slot(_epoch(p["point_time"]), _epoch(p["point_time"]) + period_s, float(p["value"]) * scale)
                for p in document["data"]
            ]
        else:  # Carbon Aware SDK: a list of forecasts (one per location); the first is used
            forecast = document[0] if isinstance(document, list) else document
            slots = [
                Slot(
                    _epoch(p["timestamp"]),
                    _epoch(p["timestamp"]) + float(p["duration"]) * 60,
                    float(p["value"]),
                )
                for p in forecast["forecastData"]
            ]
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise InvalidRequestError(
            f"batch.carbon.forecast {source!r} is neither a Carbon Aware SDK /emissions/forecasts/current "
            f"nor a WattTime v3 forecast document ({type(error).__name__}: {error})",
            "batch.carbon.forecast",
        ) from None
    if not slots:
        raise InvalidRequestError(f"batch.carbon.forecast {source!r} has no points", "batch.carbon.forecast")
    return sorted(slots, key=lambda slot: slot.start_s)


def load_forecast(source: str) -> list[Slot]:
    """Read the forecast from a path or URL (blocking: call it off the event loop)."""
    try:
        if source.startswith(("http://", "https://")):
            response = httpx.get(source, timeout=10.0)
            response.raise_for_status()
            document = response.json()
        else:
            document = json.loads(Path(source).read_text())
    except (OSError, httpx.HTTPError, json.JSONDecodeError) as error:
        raise InvalidRequestError(
            f"batch.carbon.forecast {source!r} cannot be read: {error}", "batch.carbon.forecast"
        ) from None
    return parse_forecast(document, source)


def mean_intensity(slots: list[Slot], start_s: float, end_s: float) -> float:
    """Time-weighted mean over [start_s, end_s]; the first point's value before it, the last's after."""
    if end_s <= start_s:
        return _at(slots, start_s)
    total = 0.0
    edges = sorted({start_s, end_s, *(s.start_s for s in slots if start_s < s.start_s < end_s)})
    for left, right in zip(edges, edges[1:], strict=False):
        total += _at(slots, left) * (right - left)
    return total / (end_s - start_s)


def _at(slots: list[Slot], moment_s: float) -> float:
    current = slots[0].g_per_kwh
    for slot in slots:
        if slot.start_s > moment_s:
            break
        current = slot.g_per_kwh
    return current


def choose_window(slots: list[Slot], now_s: float, deadline_s: float, run_s: float) -> Window:
    """The start in [now, deadline - run] with the lowest mean intensity over the run (the earliest of
    equals); now when no later start meets the deadline."""
    starts = [now_s, *(s.start_s for s in slots if now_s < s.start_s <= deadline_s - run_s)]
    scored = [(mean_intensity(slots, start, start + run_s), start) for start in starts]
    best_g, best_start = min(scored)
    return Window(best_start, best_start + run_s, best_g)


def energy_kwh(busy_s: float, power_watts: float) -> float:
    """Energy of `busy_s` seconds of CPU/GPU time at `power_watts`."""
    return busy_s * power_watts / JOULES_PER_KWH
