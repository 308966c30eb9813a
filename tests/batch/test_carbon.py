"""Carbon-aware windows from fixed forecast documents of both shapes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from inferline.batch.carbon import LBS_PER_MWH_TO_G_PER_KWH, choose_window, load_forecast, mean_intensity
from inferline.batch.schedule import plan_start
from inferline.config import CarbonConfig
from inferline.errors import InvalidRequestError

T0 = 1_900_000_000.0  # 2030-03-17T17:46:40Z
GSF = [
    {
        "location": "eastus",
        "dataStartAt": "2030-03-17T17:45:00Z",
        "dataEndAt": "2030-03-17T21:45:00Z",
        "windowSize": 5,
        "optimalDataPoints": [],
        "forecastData": [
            {"location": "eastus", "timestamp": "2030-03-17T17:45:00Z", "duration": 60, "value": 400.0},
            {"location": "eastus", "timestamp": "2030-03-17T18:45:00Z", "duration": 60, "value": 300.0},
            {"location": "eastus", "timestamp": "2030-03-17T19:45:00Z", "duration": 60, "value": 120.0},
            {"location": "eastus", "timestamp": "2030-03-17T20:45:00Z", "duration": 60, "value": 350.0},
        ],
    }
]
WATTTIME = {
    "data": [
        {"point_time": "2030-03-17T17:45:00+00:00", "value": 900.0},
        {"point_time": "2030-03-17T17:50:00+00:00", "value": 300.0},
        {"point_time": "2030-03-17T17:55:00+00:00", "value": 600.0},
    ],
    "meta": {"data_point_period_seconds": 300, "units": "lbs_co2_per_mwh", "signal_type": "co2_moer"},
}


def write(tmp_path: Path, name: str, document: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def test_gsf_forecast_picks_the_clean_hour_that_meets_the_deadline(tmp_path: Path) -> None:
    slots = load_forecast(write(tmp_path, "gsf.json", GSF))
    assert [s.g_per_kwh for s in slots] == [400, 300, 120, 350]
    window = choose_window(slots, T0, T0 + 4 * 3600, run_s=1800)
    assert window.g_per_kwh == 120
    assert window.start_s == slots[2].start_s
    # a deadline before the clean hour: the best that still finishes in time
    assert choose_window(slots, T0, slots[2].start_s, run_s=1800).g_per_kwh == 300
    # a run too long for any later start: at once
    assert choose_window(slots, T0, T0 + 3600, run_s=7200).start_s == T0


def test_watttime_forecast_in_grams_per_kwh(tmp_path: Path) -> None:
    slots = load_forecast(write(tmp_path, "wt.json", WATTTIME))
    assert slots[1].g_per_kwh == pytest.approx(300 * LBS_PER_MWH_TO_G_PER_KWH)
    assert slots[1].end_s - slots[1].start_s == 300
    window = choose_window(slots, slots[0].start_s, slots[0].start_s + 3600, run_s=300)
    assert window.start_s == slots[1].start_s
    # a run spanning two points averages them by time
    assert mean_intensity(slots, slots[1].start_s, slots[1].start_s + 600) == pytest.approx(
        450 * LBS_PER_MWH_TO_G_PER_KWH
    )


def test_unreadable_forecast_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"batch\.carbon\.forecast"):
        load_forecast(write(tmp_path, "bad.json", {"points": []}))


def test_without_a_forecast_a_carbon_aware_batch_runs_at_once_and_says_so() -> None:
    start = asyncio.run(
        plan_start(CarbonConfig(), {"carbon_aware": "true"}, 100, None, T0, expires_at=T0 + 86400)
    )
    assert start.at_s == T0
    assert start.report is not None
    assert "no carbon forecast is configured" in start.report["note"]
    assert start.report["estimated_run_s"] == 100 / CarbonConfig().default_lines_per_s


def test_the_report_compares_the_window_with_running_at_once(tmp_path: Path) -> None:
    config = CarbonConfig(forecast=write(tmp_path, "gsf.json", GSF), power_watts=100)
    start = asyncio.run(plan_start(config, {"carbon_aware": "true"}, 180, 0.1, T0, expires_at=T0 + 86400))
    report = start.report
    assert report is not None
    assert report["estimated_run_s"] == 1800
    assert report["estimated_energy_kwh"] == pytest.approx(0.05)  # 100 W for half an hour
    assert report["estimated_gco2e"] == pytest.approx(0.05 * 120)
    assert report["at_once_gco2e"] == pytest.approx(0.05 * 400)
    assert start.at_s == report["window_start"]
    assert report["throughput_measured"]
    assert asyncio.run(plan_start(config, {}, 180, 0.1, T0, T0 + 86400)).report is None
