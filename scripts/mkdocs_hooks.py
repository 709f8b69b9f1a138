"""MkDocs hooks (``hooks:`` in mkdocs.yml): the site shows the repository's own files, never copies of them.

- ``<!-- include: PATH -->`` (PATH from the repository root): a Markdown file's text with its links re-pointed from
  the page (README.md, BENCHMARKS.md, RELIABILITY.md stay where they are; ``<!-- include: PATH under a heading -->``
  moves its headings one level down); any other file as a fenced block
  (``deploy/*.example.yaml``: the example configs, every key with its default).
- ``<!-- settings-table: module:Class -->``: one row per field of a pydantic settings model: key, type, default and
  the ``#:`` comment above the field in the source (a field without one is a warning: every key says what it does).
- A link to a repository file outside ``docs/`` becomes the path in code (the site does not serve it); a link or
  picture whose file does not exist is a warning, so ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import posixpath
import re
import textwrap
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mkdocs.hooks.ks_platform")

REPO = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"<!-- include: (\S+)( under a heading)? -->")
SETTINGS_TABLE = re.compile(r"<!-- settings-table: ([\w.]+):(\w+) -->")
LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
FENCE_LANGUAGE = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".py": "python", ".sh": "bash"}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    page_dir = (docs_dir / page.file.src_path).parent
    markdown = repoint_links(markdown, page_dir, page_dir, docs_dir, page.file.src_path)
    markdown = INCLUDE.sub(
        lambda m: include(m.group(1), page_dir, docs_dir, page.file.src_path, demote=bool(m.group(2))), markdown
    )
    return SETTINGS_TABLE.sub(lambda m: settings_table(m.group(1), m.group(2)), markdown)


def include(path: str, page_dir: Path, docs_dir: Path, page_name: str, demote: bool = False) -> str:
    source = REPO / path
    if not source.is_file():
        log.warning(f"{page_name}: includes {path}, which is not a file of the repository")
        return f"`{path}` (missing)"
    text = source.read_text()
    if source.suffix == ".md":
        text = demote_headings(text) if demote else text
        return repoint_links(text, source.parent, page_dir, docs_dir, f"{page_name} (from {path})")
    language = FENCE_LANGUAGE.get(source.suffix, "text")
    return f"```{language}\n# {path}\n{text.rstrip()}\n```"


def demote_headings(text: str) -> str:
    """Every heading one level down (``under a heading``: the file's title becomes a section of the page)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        in_fence ^= line.startswith("```")
        lines.append("#" + line if not in_fence and re.match(r"#+ ", line) else line)
    return "\n".join(lines)


def repoint_links(text: str, source_dir: Path, page_dir: Path, docs_dir: Path, where: str) -> str:
    """Links of ``text`` (written in ``source_dir``) as seen from a page in ``page_dir``."""

    def repoint(match: re.Match[str]) -> str:
        bang, label, target = match.groups()
        if "://" in target or target.startswith(("#", "mailto:")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = Path(posixpath.normpath((source_dir / path).as_posix()))
        if not resolved.exists():
            log.warning(f"{where}: links to {target}, which does not exist")
            return match.group(0)
        if resolved.is_relative_to(docs_dir):
            relative = posixpath.relpath(resolved.as_posix(), page_dir.as_posix())
            return f"{bang}[{label}]({relative}{'#' + anchor if anchor else ''})"
        if bang:
            log.warning(f"{where}: shows {target}, which lies outside docs/ (the site cannot serve it)")
            return match.group(0)
        repo_path = resolved.relative_to(REPO).as_posix()
        plain = label.strip("`")
        return f"`{repo_path}`" if plain == repo_path else f"{label} (`{repo_path}`)"

    return LINK.sub(repoint, text)


def settings_table(module_name: str, class_name: str) -> str:
    """A Markdown table of a pydantic model's fields: key, type, default, what it does."""
    model = getattr(importlib.import_module(module_name), class_name)
    source = Path(inspect.getsourcefile(model) or "")
    if not source.is_relative_to(REPO):
        log.warning(f"{module_name} is imported from {source}, not this checkout: build with PYTHONPATH={REPO}")
    annotations, comments = field_sources(model)
    module = importlib.import_module(model.__module__)
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        default = "required" if field.is_required() else f"`{as_yaml(field.get_default(call_default_factory=True))}`"
        if not comments.get(name):
            log.warning(f"{model.__name__}.{name} has no #: comment above it ({inspect.getsourcefile(model)})")
        annotation = resolve_alias(annotations.get(name, ""), module)
        rows.append(f"| `{name}` | `{annotation}` | {default} | {comments.get(name, '')} |")
    return "\n".join(rows)


def resolve_alias(annotation: str, module: Any) -> str:
    """A module-level alias such as ``CpuSteps = Literal[...]`` shown as what it stands for."""
    alias = getattr(module, annotation, None) if annotation.isidentifier() else None
    if alias is not None and getattr(alias, "__origin__", None) is not None:
        return str(alias).replace("typing.", "")
    return annotation


def field_sources(model: type) -> tuple[dict[str, str], dict[str, str]]:
    """Each field's annotation as written, and the ``#:`` comment lines right above it."""
    lines = textwrap.dedent(inspect.getsource(model)).splitlines()
    body = ast.parse("\n".join(lines)).body[0].body  # type: ignore[attr-defined]
    annotations: dict[str, str] = {}
    comments: dict[str, str] = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        annotations[name] = ast.unparse(node.annotation)
        above: list[str] = []
        line = node.lineno - 2  # 0-based index of the line above the field
        while line >= 0 and lines[line].strip().startswith("#:"):
            above.insert(0, lines[line].strip()[2:].strip())
            line -= 1
        comments[name] = " ".join(above).replace("|", "\\|")
    return annotations, comments


def as_yaml(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
