"""`pip install inferline` (pyproject's dependencies, no extra) brings every module the package imports,
but those an extra is for; and the server and the CLI start without the extras.

CI installs the test extra, which brings nearly everything: without these checks a module imported by
the server but listed only there passes every other test and breaks the README's first command (httpx
did, through the batch service and the CLI's parser)."""

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "inferline"

OPTIONAL = {"ray": "ray", "nats": "streams", "matplotlib": "bench", "transformers": "test", "onnx": "test"}
"""Modules the package imports only where a feature needs them, and the extra that brings each."""


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _installed_by(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install, their own requirements (and the extras asked of them)
    included, by normalized name."""
    names: set[str] = set()
    expanded: set[tuple[str, str]] = set()  # (distribution, extra); "" for its base requirements
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        names.add(name)
        for extra in {"", *requirement.extras} - {e for n, e in expanded if n == name}:
            expanded.add((name, extra))
            try:
                needs = importlib.metadata.requires(name) or []
            except importlib.metadata.PackageNotFoundError:
                continue  # not installed here: nothing of it to follow
            for need in map(Requirement, needs):
                # No marker: a base requirement. A marker: its extra, and the platform, decide.
                if need.marker.evaluate({"extra": extra}) if need.marker else extra == "":
                    pending.append(need)
    return names


def _imported_top_level_modules() -> dict[str, set[Path]]:
    """Each module name the package imports (anywhere: at the top or inside a function), with where."""
    imports: dict[str, set[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imports.setdefault(name.partition(".")[0], set()).add(path.relative_to(ROOT))
    return imports


def test_the_core_dependencies_bring_every_module_the_package_imports() -> None:
    core = _installed_by(_project()["dependencies"])
    distributions = importlib.metadata.packages_distributions()
    uncovered = {}
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module == "inferline" or module in OPTIONAL:
            continue
        if not {canonicalize_name(d) for d in distributions.get(module, [])} & core:
            uncovered[module] = sorted(map(str, where))[:3]
    assert uncovered == {}, "imported by the package, installed by no core dependency: add them to pyproject"


def test_each_optional_module_is_in_the_extra_named_for_it() -> None:
    extras = _project()["optional-dependencies"]
    distributions = importlib.metadata.packages_distributions()
    for module, extra in OPTIONAL.items():
        brought = _installed_by(extras[extra])  # "inferline[streams]" is followed through our metadata
        assert {canonicalize_name(d) for d in distributions.get(module, [])} & brought, (module, extra)


def _run_without(modules: set[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter where `modules` (top-level names) cannot be imported, as in an
    install that lacks them."""
    blocker = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {modules!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
"""
    return subprocess.run(
        [sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_server_and_the_cli_start_without_the_extras() -> None:
    core = _installed_by(_project()["dependencies"])
    absent = {
        module
        for module, names in importlib.metadata.packages_distributions().items()
        if module not in sys.stdlib_module_names
        and not {canonicalize_name(n) for n in names} & (core | {"inferline"})
    }
    assert "ray" in absent  # an extra's
    assert "pytest" in absent  # the test extra's
    done = _run_without(
        absent,
        """
from inferline.cli import build_parser
build_parser().parse_args(["serve"])
import inferline.server.app, inferline.server.serve, inferline.streams.service, inferline.edge.agent
print("started")
""",
    )
    assert done.stdout.strip() == "started", done.stderr


def _cli_without(modules: set[str], *argv: str) -> subprocess.CompletedProcess[str]:
    return _run_without(modules, f"from inferline.cli import main; sys.exit(main({list(argv)!r}))")


def test_a_feature_whose_extra_is_missing_says_which_extra_to_install(tmp_path: Path) -> None:
    ray = _cli_without({"ray"}, "serve", "--ray", "--port", "0")
    assert ray.returncode == 2, ray.stderr
    assert "inferline serve --ray needs the 'ray' package" in ray.stderr
    assert "pip install 'inferline[ray]'" in ray.stderr
    assert "Traceback" not in ray.stderr

    config = tmp_path / "streams.yaml"
    config.write_text(
        "streams:\n"
        "  - name: scored\n"
        "    model: m\n"
        "    source: {kind: nats, stream: IN, subject: in, durable: d}\n"
        "    sink: {kind: database}\n"
        "deployments: [{name: m, kind: remote, base_url: 'http://127.0.0.1:9'}]\n"
    )
    nats = _cli_without({"nats"}, "stream", "run", str(config))
    assert nats.returncode == 2, nats.stderr
    assert "the NATS source of stream 'IN' needs the 'nats' package" in nats.stderr
    assert "pip install 'inferline[streams]'" in nats.stderr
    assert "Traceback" not in nats.stderr

    plot = _run_without(
        {"matplotlib"},
        f"""
from pathlib import Path
from inferline.bench.plot import plot_results
from inferline.errors import MissingExtraError
try:
    plot_results([], Path({str(tmp_path / "chart.png")!r}))
except MissingExtraError as error:
    print(error)
""",
    )
    assert "plotting needs the 'matplotlib' package" in plot.stdout, plot.stderr
    assert "pip install 'inferline[bench]'" in plot.stdout
