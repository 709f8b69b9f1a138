"""The code's shape: Dagster's private API only behind its fence module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ks_platform.dagster_internals as fence

PACKAGE = Path(__file__).resolve().parent.parent / "ks_platform"
FENCE = PACKAGE / "dagster_internals.py"


def private_dagster_uses(path: Path) -> list[int]:
    """The line of each import of ``dagster._…`` in ``path`` (``import``, ``from … import`` and a literal module
    name passed to a call, such as ``importlib.import_module("dagster._…")``)."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        if any(n == "dagster._" or n.startswith("dagster._") for n in names):
            uses.append(node.lineno)
    return sorted(set(uses))


def test_no_module_but_the_fence_uses_dagsters_private_api():
    uses = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != FENCE
        for line in private_dagster_uses(path)
    ]
    assert uses == [], f"import these from ks_platform.dagster_internals (with the reason and the public API): {uses}"


def test_the_scan_finds_each_kind_of_private_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import dagster._core.events\n"
        "from dagster._core.events import DagsterEvent\n"
        "import importlib\nimportlib.import_module('dagster._cli.api')\n"
        "import dagster as dg\nfrom dagster import AssetKey\n"
    )
    assert private_dagster_uses(sample) == [1, 2, 4]


def test_everything_the_fence_exports_is_used_and_says_what_it_waits_for():
    sources = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p != FENCE)
    unused = [name for name in fence.__all__ if name not in sources]
    assert unused == [], f"names of ks_platform/dagster_internals.py nothing uses: {unused}"
    assert FENCE.read_text().count("Waits for") >= 5


# -- the architecture page's tree -----------------------------------------------------------------------------------
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
NAME = re.compile(r"[\w.]+(?:\.py|/)")


def tree_paths(page: str) -> list[str]:
    """The paths the ``ks_platform/`` tree of the architecture page lists: a line is ``<indent><name>[, <name>…]``
    (two spaces per level, a folder ends in ``/``) then its description; a deeper indent without a name continues
    the description above."""
    block = page.split("```\nks_platform/\n", 1)[1].split("```", 1)[0]
    parents = ["ks_platform/"]
    paths = []
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = []
        for part in re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split(", "):
            if not NAME.fullmatch(part):
                break
            names.append(part)
        if not names or depth > len(parents):
            continue
        if depth == 0:  # a top-level folder of the repository after the package
            break
        del parents[depth:]
        paths += ["".join(parents[1:]) + name for name in names]
        if names[-1].endswith("/"):
            parents.append(names[-1])
    return paths


def test_the_architecture_tree_lists_every_module_and_only_modules_that_exist():
    listed = tree_paths(ARCHITECTURE.read_text())
    modules = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    folders = {str(p.relative_to(PACKAGE)) + "/" for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert sorted(set(listed) - modules - folders) == [], "listed in docs/architecture.md but not in ks_platform/"
    assert sorted(modules - set(listed)) == [], "modules of ks_platform/ that docs/architecture.md does not list"


def test_the_tree_reader_follows_indents_and_lists():
    page = "```\nks_platform/\n  a/   x\n    b.py, c.py  y\n      more of y\n  d.py  z\ntests/  t\n```\n"
    assert tree_paths(page) == ["a/", "a/b.py", "a/c.py", "d.py"]


TESTS = PACKAGE.parent / "ks_platform_tests"


def imported_test_modules(source: str) -> list[str]:
    """The test modules (``test_*``) a module's source imports; shared helpers belong in ``*_support.py``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if is_test_module(node.module) else [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [name for name in names if is_test_module(name)]
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == TESTS.name and parts[-1].startswith("test_")


def test_no_test_module_imports_another_test_module():
    offenders = {
        str(path.relative_to(TESTS)): names
        for path in sorted(TESTS.rglob("*.py"))
        if (names := imported_test_modules(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, f"move what is shared into a *_support.py module: {offenders}"


def test_the_test_import_scan_finds_each_spelling():
    assert imported_test_modules("from ks_platform_tests.test_sensor import tick") == ["ks_platform_tests.test_sensor"]
    assert imported_test_modules("from ks_platform_tests.formats import test_nwb_field") == [
        "ks_platform_tests.formats.test_nwb_field"
    ]
    assert imported_test_modules("import ks_platform_tests.test_executor") == ["ks_platform_tests.test_executor"]
    assert imported_test_modules("from ks_platform_tests.sensor_support import tick") == []
