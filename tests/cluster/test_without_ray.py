"""Without --ray nothing imports Ray: the server, the router and the CLI run as they did before it."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
from inferline.cli import build_parser
from inferline.config import ServerConfig
from inferline.server.app import create_app

assert build_parser().parse_args(["serve", "--port", "0"]).ray is None
create_app(ServerConfig())  # the default deployments' backends built, the whole app assembled
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_the_server_and_cli_do_not_import_ray() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_serve_ray_takes_an_address_or_starts_ray_here() -> None:
    from inferline.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--ray"]).ray == "local"
    assert parser.parse_args(["serve", "--ray", "auto"]).ray == "auto"
    assert parser.parse_args(["serve", "--ray", "10.0.0.5:6379", "--ray-num-cpus", "2"]).ray_num_cpus == 2
