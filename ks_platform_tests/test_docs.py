"""The docs site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``: a broken link, a missing page or
picture, an included file that is not there, or a settings field without a ``#:`` comment fails the build. The
settings tables list every field of the settings classes; the README keeps the two commands CI runs."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ks_platform.execution.inventory import HostSpec, Inventory
from ks_platform.execution.kubernetes import KubernetesStorage
from ks_platform.execution.slurm_executor import SlurmSettings

REPO = Path(__file__).resolve().parents[1]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``config`` into ``site``, importing the settings classes of this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def page_text(site: Path, page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", (site / page / "index.html").read_text()))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    built = mkdocs_build(REPO / "mkdocs.yml", site)
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    return site


def test_docs_site_builds_strict_with_every_page(site):
    nav_pages = re.findall(r":\s*([\w-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
    assert len(nav_pages) >= 12, nav_pages
    for page in nav_pages:
        built = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert built.is_file(), f"{page} is in the nav but was not built"
    assert "make demo" in (site / "index.html").read_text(), "the home page includes the README"


@pytest.mark.parametrize(
    ("page", "model"),
    [
        ("slurm", SlurmSettings),
        ("docker-hosts", Inventory),
        ("docker-hosts", HostSpec),
        ("kubernetes", KubernetesStorage),
    ],
)
def test_settings_tables_list_every_key(site, page, model):
    text = page_text(site, page)
    for name, field in model.model_fields.items():
        if not field.exclude:
            assert re.search(rf"\b{name}\b", text), f"{page}: {model.__name__}.{name} is not in the settings table"


def test_example_configs_are_shown_as_shipped(site):
    for page, example in [("slurm", "slurm.example.yaml"), ("docker-hosts", "inventory.example.yaml")]:
        text = page_text(site, page)
        for key in yaml.safe_load((REPO / "deploy" / example).read_text()):
            assert key in text, f"{page}: deploy/{example} key {key} not shown"


def test_readme_is_short_and_keeps_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 80
    commands = re.search(r"## The two commands\n\n```bash\n(.*?)```", readme, re.S)
    assert commands, "README.md: the two commands block is missing"
    assert [line.split()[:2] for line in commands.group(1).splitlines()] == [["make", "demo"], ["make", "test"]]
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("[the old page](no-such-page.md)", "no-such-page.md"),
        ("<!-- include: deploy/no-such.example.yaml -->", "no-such.example.yaml"),
        ("[a repository file](../no/such/file.py)", "no/such/file.py"),
        ("![a picture](screenshots/no-such.png)", "no-such.png"),
    ],
)
def test_a_broken_link_or_include_fails_the_build(tmp_path, broken, message):
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    page = docs / "first-sort.md"
    page.write_text(page.read_text() + f"\n{broken}\n")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config.update(docs_dir=str(docs), hooks=[str(REPO / "scripts" / "mkdocs_hooks.py")])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config, allow_unicode=True))
    built = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0, f"a page with {broken} built:\n{built.stderr}"
    assert message in built.stderr, built.stderr
