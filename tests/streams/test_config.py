"""A `streams:` section that cannot run is refused at load, naming the field, what is wrong and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.errors import InvalidRequestError
from inferline.server.serve import load_server_config

DEPLOYMENT = "deployments:\n  - {name: fraud, kind: onnx, source: fraud.onnx}\n"
SOURCE = "source: {kind: redis, stream: in}"
SINK = "sink: {kind: database}"


@pytest.mark.parametrize(
    ("stream", "field", "message"),
    [
        (f"{{name: s, {SOURCE}, {SINK}, model: frawd}}", "streams.0.model", "model 'frawd' is no route"),
        (
            f"{{name: s, {SOURCE}, {SINK}, model: fraud, task: generate}}",
            "streams.0",
            "task generate needs a prompt_template",
        ),
        (
            f"{{name: s, source: {{kind: kafka, stream: in}}, {SINK}, model: fraud}}",
            "streams.0.source",
            "kafka",
        ),
        (f"{{name: s, {SOURCE}, {SINK}, model: fraud, max_batch_size: 0}}", "streams.0.max_batch_size", "1"),
    ],
)
def test_a_stream_that_cannot_run_names_its_field(
    tmp_path: Path, stream: str, field: str, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"{DEPLOYMENT}streams:\n  - {stream}\n")
    with pytest.raises(InvalidRequestError) as error:
        load_server_config(str(path))
    assert error.value.param is not None
    assert error.value.param.startswith(field)
    assert message in str(error.value)


def test_two_streams_of_one_name_are_refused(tmp_path: Path) -> None:
    stream = f"{{name: s, {SOURCE}, {SINK}, model: fraud}}"
    path = tmp_path / "c.yaml"
    path.write_text(f"{DEPLOYMENT}streams:\n  - {stream}\n  - {stream}\n")
    with pytest.raises(InvalidRequestError, match="name 's' is already used at streams.0.name"):
        load_server_config(str(path))
