"""The inferline-bench/1 document: what serve writes fits the schema; misfits are named."""

import copy
import json
from typing import Any

import pytest

from inferline.bench.config import LoadPoint, ServeBenchConfig
from inferline.bench.load import PointRun
from inferline.bench.metrics import SLO, compute_metrics
from inferline.bench.record import RequestRecord
from inferline.bench.report import PointResult
from inferline.bench.schema import SCHEMA_VERSION, json_schema, validate
from inferline.bench.serve import serve_document
from inferline.errors import InvalidRequestError


def document() -> dict[str, Any]:
    config = ServeBenchConfig(model="m", concurrency=[2], request_rate=[float("inf")], slo=SLO(ttft_s=1.0))
    records = [
        RequestRecord(1.0, 2.0, [1.5, 1.7, 2.0], 3, 12),
        RequestRecord(1.0, 1.1, [], 0, None, "HTTP 500 from /v1/completions: boom"),
    ]
    run = PointRun(records, started_s=1.0, duration_s=1.0)
    results = [PointResult(point, run, compute_metrics(records, 1.0, config.slo)) for point in config.points]
    return serve_document(config, 2, ["m"], results)


def test_serve_document_fits_the_schema_and_survives_json() -> None:
    doc = json.loads(json.dumps(document(), allow_nan=False))
    validate(doc)
    assert doc["schema"] == SCHEMA_VERSION
    assert doc["kind"] == "serve"
    closed, opened = doc["points"]
    assert (closed["mode"], closed["concurrency"], closed["request_rate"]) == ("closed", 2, None)
    assert (opened["mode"], opened["request_rate"]) == ("open", "inf")
    assert closed["errors"] == [{"message": "HTTP 500 from /v1/completions: boom", "count": 1}]
    assert closed["requests"][0]["tpot_s"] == pytest.approx(0.25)
    assert doc["slo"] == {"ttft_s": 1.0, "tpot_s": None, "e2e_s": None}
    assert doc["label"] == "m @ 127.0.0.1:8000"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("points"), "points is missing"),
        (lambda d: d["points"][0].update(num_failed=-1), r"points\[0\].num_failed must be at least 0"),
        (lambda d: d["points"][0].update(ttft_s={"mean": 1}), r"points\[0\].ttft_s.count is missing"),
        (lambda d: d["workload"].update(ignore_eos="yes"), "workload.ignore_eos must be boolean"),
        (lambda d: d.update(kind="other"), "kind must be one of"),
        (lambda d: d.update(schema="inferline-bench/0"), "is not an inferline-bench/1 result"),
    ],
)
def test_misfits_are_named(change: Any, message: str) -> None:
    doc = copy.deepcopy(document())
    change(doc)
    with pytest.raises(InvalidRequestError, match=message):
        validate(doc, "result.json")


def test_unknown_fields_are_allowed_within_the_version() -> None:
    doc = document()
    doc["points"][0]["added_later"] = 1
    validate(doc)


def test_published_schema_is_json() -> None:
    schema = json.loads(json.dumps(json_schema()))
    assert schema["$id"] == SCHEMA_VERSION
    assert {s["properties"]["kind"]["const"] for s in schema["oneOf"]} == {"serve", "offline"}


def test_load_points_are_labelled() -> None:
    assert LoadPoint(mode="closed", concurrency=4).label == "concurrency 4"
    assert LoadPoint(mode="open", request_rate=0.5, concurrency=8).label == "rate 0.5/s, max 8 in flight"
    assert LoadPoint(mode="open", request_rate=float("inf")).label == "rate inf"
