"""Every shipped model card's recipe runs as written: its command is one ``worldkit run`` that validates
(what ``run`` would refuse included) and resolves to the configuration the card shows."""
import re
import shlex
from pathlib import Path

import pytest
import yaml

from worldkit import cli

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "worldkit" / "base").glob("*.md"))
MACHINE = {("data", "cache_dir")}  # where this machine keeps its episodes: not part of the recipe


def recipe(card: Path) -> list[str]:
    """The card's command as argv, without leading ``VAR=value`` environment settings."""
    found = re.search(r"^- command: `([^`]*)`", card.read_text(), re.M)
    assert found, f"{card.name}: no '- command: `...`' line"
    words = shlex.split(found.group(1))
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    return words


def card_config(card: Path) -> dict:
    found = re.search(r"## Resolved configuration\s+```yaml\n(.*?)```", card.read_text(), re.S)
    assert found, f"{card.name}: no resolved configuration"
    return yaml.safe_load(found.group(1))


def differences(card: dict, resolved: dict, where: tuple = ()) -> list[str]:
    """Every value the card shows that the recipe does not resolve to (keys only the recipe has: new
    fields with their defaults, not compared)."""
    out = []
    for key, value in card.items():
        path = (*where, key)
        if path in MACHINE:
            continue
        if key not in resolved:
            out.append(f"{'.'.join(path)}: in the card, not in the config")
        elif isinstance(value, dict) and isinstance(resolved[key], dict):
            out += differences(value, resolved[key], path)
        elif value != resolved[key]:
            out.append(f"{'.'.join(path)}: card {value!r}, recipe {resolved[key]!r}")
    return out


def test_every_card_is_checked():
    assert {c.stem for c in CARDS} >= {"pendulum", "memory"}
    assert {c.stem for c in CARDS} == {p.stem for p in (ROOT / "worldkit" / "base").glob("*.pt")}


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.name)
def test_the_recipe_validates_as_written_and_gives_the_cards_config(card, tmp_path, monkeypatch, capsys):
    words = recipe(card)
    assert words[:2] == ["worldkit", "run"], f"{card.name}: the recipe is not one `worldkit run` command: {words}"
    args = words[2:]
    assert "--resume" not in args and "--out" not in args, f"{card.name}: a recipe starts a run: {words}"
    monkeypatch.chdir(ROOT)
    cache = ["--set", f"data.cache_dir={tmp_path}"]  # this machine's cache folder
    code = cli.main(["validate", *args, *cache])
    out, err = capsys.readouterr()
    assert code == 0, f"{card.name}: `{' '.join(words)}` does not validate:\n{err}"
    resolved = yaml.safe_load(out)
    assert differences(card_config(card), resolved) == [], card.name
