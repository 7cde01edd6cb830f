"""The docs name every core module: the README's layout block and the architecture table of
docs/design.md follow the tree, so a module added or renamed without a word in them fails here."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRIVATE = {"__init__", "__main__", "_quiet_interrupt"}  # said beside cli / quiet


def core_modules() -> set[str]:
    names = {p.stem for p in (ROOT / "worldkit").glob("*.py")} - PRIVATE
    return names | {p.name + "/" for p in (ROOT / "worldkit").iterdir() if (p / "__init__.py").exists()}


def test_the_readme_layout_names_every_core_module():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("worldkit/            core"):readme.index("worldkit/base/")]
    words = set(re.findall(r"[a-z_]+/?", block))
    missing = sorted(m for m in core_modules() if m not in words)
    assert not missing, f"README's layout block does not name: {missing}"


def test_the_design_doc_has_a_row_for_every_core_module():
    rows = [line for line in (ROOT / "docs" / "design.md").read_text().splitlines() if line.startswith("| `")]
    named = {n for row in rows for n in re.findall(r"`([a-z_]+(?:\.py|/))`", row.split("|")[1])}
    named = {n[:-3] if n.endswith(".py") else n for n in named}
    missing = sorted(core_modules() - named)
    assert not missing, f"docs/design.md's module table has no row for: {missing}"
    stale = sorted(named - core_modules() - PRIVATE)
    assert not stale, f"docs/design.md's module table has rows for modules that are not there: {stale}"
