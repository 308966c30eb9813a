"""Every worked example in examples/ is a valid server config (the README points users at them)."""

from pathlib import Path

import pytest

from inferline.server.serve import load_server_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    config = load_server_config(str(path))
    assert config.routes
