"""The plugin registry against real entry points: temporary distributions (a ``.dist-info`` folder and
a module on ``sys.path``) stand in for installed third-party packages."""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
from pydantic import ValidationError

from worldkit import registry
from worldkit.errors import (
    BrokenPluginError,
    DuplicatePluginError,
    PluginError,
    PluginTypeError,
    UnknownPluginError,
    WorldkitError,
)
from worldkit.interfaces import BlockSelector, MemoryPolicy, PluginConfig

MEMORY_MODULE = '''
from worldkit.interfaces import MemoryPolicy, PluginConfig


class Fake(MemoryPolicy):
    """A fake memory policy for registry tests.

    More text that is not part of the description.
    """

    class Config(PluginConfig):
        cap: int = 1

    def reset(self, spec): pass
    def view(self, layer): raise NotImplementedError
    def commit(self, k, v, pooled_q): pass
    def nbytes(self): return 0


class NotAPlugin:
    """Has the right shape but not the right base class."""
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    """``add(dist, version, entry_points, modules)`` installs a distribution into a tmp folder on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    added: list[str] = []

    def add(dist: str, version: str, groups: dict[str, dict[str, str]], modules: dict[str, str]) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        ini = "".join(
            f"[{group}]\n" + "".join(f"{n} = {target}\n" for n, target in eps.items()) for group, eps in groups.items()
        )
        (info / "entry_points.txt").write_text(ini)
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            added.append(name)
        importlib.invalidate_caches()
        registry.clear_cache()

    yield add
    for name in added:
        sys.modules.pop(name, None)
    registry.clear_cache()


def test_reads_worldkits_own_entry_points_without_importing_them():
    names = registry.names("memory")
    assert {"dense", "sliding_window", "sink", "persistent_block"} <= set(names)
    assert names == sorted(names)
    assert registry.names("trainer") and registry.names("env")


def test_get_finds_a_plugin_of_an_installed_distribution(site):
    site("fakedist", "0.3", {"worldkit.memory": {"fake": "wk_fake_mem:Fake"}}, {"wk_fake_mem": MEMORY_MODULE})
    cls = registry.get("memory", "fake")
    assert issubclass(cls, MemoryPolicy) and cls.__module__ == "wk_fake_mem"
    assert registry.get("memory", "fake") is cls  # cached
    (entry,) = [e for e in registry.entries("memory") if e.name == "fake"]
    assert (entry.kind, entry.dist, entry.version, entry.target) == ("memory", "fakedist", "0.3", "wk_fake_mem:Fake")
    assert entry.ok and entry.description == "A fake memory policy for registry tests."
    assert entry.origin == "fakedist 0.3"


def test_plugin_module_is_imported_only_when_looked_up(site):
    site("lazydist", "1.0", {"worldkit.memory": {"lazy": "wk_lazy_mem:Fake"}}, {"wk_lazy_mem": MEMORY_MODULE})
    assert "lazy" in registry.names("memory")
    assert "wk_lazy_mem" not in sys.modules
    registry.get("memory", "lazy")
    assert "wk_lazy_mem" in sys.modules


def test_entry_points_are_read_at_lookup_not_at_construction_and_cached(monkeypatch):
    calls = []
    real = registry.entry_points

    def counting(**kw):
        calls.append(kw["group"])
        return real(**kw)

    monkeypatch.setattr(registry, "entry_points", counting)
    reg = registry.Registry()
    assert calls == []
    reg.names("memory")
    reg.names("memory")
    assert calls == ["worldkit.memory"]
    reg.clear_cache()
    reg.names("memory")
    assert calls == ["worldkit.memory", "worldkit.memory"]


def test_unknown_name_lists_choices_and_suggests_a_close_match(site):
    site("fakedist", "0.3", {"worldkit.memory": {"fake": "wk_fake_mem:Fake"}}, {"wk_fake_mem": MEMORY_MODULE})
    with pytest.raises(UnknownPluginError) as err:
        registry.get("memory", "sliding_windw")
    assert err.value.suggestion == "sliding_window"
    assert "did you mean 'sliding_window'?" in str(err.value)
    assert "fake" in err.value.choices and "dense" in str(err.value)
    with pytest.raises(UnknownPluginError) as err:
        registry.get("memory", "qqqqqqq")
    assert err.value.suggestion is None and "did you mean" not in str(err.value)


def test_unknown_kind_is_a_user_error():
    with pytest.raises(WorldkitError, match="unknown plugin kind 'memroy'.*memory"):
        registry.names("memroy")


def test_same_name_from_two_distributions_is_refused_naming_both(site):
    site("alpha-plugins", "1.0", {"worldkit.memory": {"twin": "wk_twin_a:Fake"}}, {"wk_twin_a": MEMORY_MODULE})
    site("beta-plugins", "2.0", {"worldkit.memory": {"twin": "wk_twin_b:Fake", "solo": "wk_twin_b:Fake"}},
         {"wk_twin_b": MEMORY_MODULE})
    with pytest.raises(DuplicatePluginError) as err:
        registry.get("memory", "twin")
    assert "alpha-plugins 1.0" in str(err.value) and "beta-plugins 2.0" in str(err.value)
    assert registry.get("memory", "solo").__name__ == "Fake"  # the other plugins stay usable
    twins = [e for e in registry.entries("memory") if e.name == "twin"]
    assert sorted(e.dist for e in twins) == ["alpha-plugins", "beta-plugins"]
    assert all(not e.ok and "more than once" in e.error for e in twins)


def test_broken_plugin_is_reported_with_its_distribution_and_does_not_hide_others(site):
    site(
        "shaky",
        "0.0.1",
        {"worldkit.memory": {"broken": "wk_broken_mem:Fake", "missing": "wk_nowhere:Fake", "good": "wk_good_mem:Fake"}},
        {"wk_broken_mem": "raise ImportError('needs libfoo')\n", "wk_good_mem": MEMORY_MODULE},
    )
    with pytest.raises(BrokenPluginError) as err:
        registry.get("memory", "broken")
    assert "shaky 0.0.1" in str(err.value) and "ImportError: needs libfoo" in str(err.value)
    with pytest.raises(BrokenPluginError, match="ModuleNotFoundError"):
        registry.get("memory", "missing")
    assert registry.get("memory", "good").__name__ == "Fake"
    by_name = {e.name: e for e in registry.entries("memory")}
    assert not by_name["broken"].ok and "needs libfoo" in by_name["broken"].error
    assert not by_name["missing"].ok
    assert by_name["good"].ok and by_name["good"].dist == "shaky"


def test_class_of_the_wrong_kind_is_refused(site):
    site(
        "wrongdist",
        "1.0",
        {"worldkit.memory": {"plain": "wk_wrong:NotAPlugin", "func": "wk_wrong:helper"},
         "worldkit.selector": {"memory_as_selector": "wk_wrong:Fake"}},
        {"wk_wrong": MEMORY_MODULE + "\ndef helper():\n    pass\n"},
    )
    for kind, name in [("memory", "plain"), ("memory", "func"), ("selector", "memory_as_selector")]:
        with pytest.raises(PluginTypeError, match="wrongdist 1.0.*not a subclass of worldkit.interfaces"):
            registry.get(kind, name)


def test_register_is_scoped_checked_and_refuses_taken_names():
    class Sel(BlockSelector):
        """Selects nothing."""

        def select(self, pooled_q, pooled_k, own):
            return None

    with registry.register("selector", "nothing", Sel) as cls:
        assert cls is Sel and registry.get("selector", "nothing") is Sel
        assert "nothing" in registry.names("selector")
        entry = [e for e in registry.entries("selector") if e.name == "nothing"][0]
        assert entry.dist == registry.REGISTERED and entry.description == "Selects nothing."
        with pytest.raises(DuplicatePluginError):
            with registry.register("selector", "nothing", Sel):
                pass
    with pytest.raises(UnknownPluginError):
        registry.get("selector", "nothing")
    with pytest.raises(PluginTypeError):
        with registry.register("memory", "sel_as_memory", Sel):
            pass
    with pytest.raises(DuplicatePluginError):  # names from entry points are taken too
        with registry.register("selector", "all", Sel):
            pass


def test_register_replace_shadows_an_installed_plugin_and_restores_it():
    class Sel(BlockSelector):
        def select(self, pooled_q, pooled_k, own):
            return None

    with registry.register("selector", "all", Sel, replace=True):
        assert registry.get("selector", "all") is Sel
    try:
        restored = registry.get("selector", "all")  # the built-in, or its import error while it is missing
    except PluginError:
        restored = None
    assert restored is not Sel


def test_build_validates_the_plugins_own_config(site):
    site("fakedist", "0.3", {"worldkit.memory": {"fake": "wk_fake_mem:Fake"}}, {"wk_fake_mem": MEMORY_MODULE})
    plugin = registry.build("memory", "fake", {"cap": "3"})
    assert isinstance(plugin, MemoryPolicy) and plugin.config.cap == 3
    assert isinstance(plugin.config, PluginConfig)
    with pytest.raises(ValidationError, match="cpa"):
        registry.build("memory", "fake", {"cpa": 3})


def test_build_takes_the_plugin_as_a_yaml_writes_it_or_as_a_validated_spec(site):
    """``registry.build`` is the one way to build a plugin: ``{type: NAME, **fields}``, a
    ``schema.PluginSpec`` or a name with its fields all give the same plugin."""
    from worldkit.schema import PluginSpec

    site("fakedist", "0.3", {"worldkit.memory": {"fake": "wk_fake_mem:Fake"}}, {"wk_fake_mem": MEMORY_MODULE})
    from_dict = registry.build("memory", {"type": "fake", "cap": "3"})
    spec = PluginSpec.validate("memory", {"type": "fake", "cap": 3})
    from_spec = registry.build("memory", spec)
    assert from_dict.config == from_spec.config == spec.build().config == registry.build("memory", "fake", {"cap": 3}).config
    assert from_dict.config.cap == 3
    with pytest.raises(WorldkitError, match="expected a selector plugin"):
        registry.build("selector", spec)
    with pytest.raises(WorldkitError, match="type: NAME"):
        registry.build("memory", {"cap": 3})
    with pytest.raises(WorldkitError, match="cfg goes with a plugin name"):
        registry.build("memory", {"type": "fake"}, {"cap": 3})


def test_same_target_from_two_distributions_is_one_plugin(site):
    # A package reinstalled under a new distribution name can leave the old metadata behind: both name
    # the same module and class, so loading either gives the same plugin and nothing clashes.
    site("oldname", "0.1", {"worldkit.memory": {"same": "wk_same_target:Fake"}}, {"wk_same_target": MEMORY_MODULE})
    site("newname", "0.1", {"worldkit.memory": {"same": "wk_same_target:Fake"}}, {})
    assert registry.get("memory", "same").__name__ == "Fake"
    assert len([e for e in registry.entries("memory") if e.name == "same"]) == 1


def test_worldkit_plugins_says_when_two_distributions_register_the_same_plugins(site, capsys):
    from worldkit import cli

    site("oldname", "0.1", {"worldkit.memory": {"same": "wk_same_note:Fake"}}, {"wk_same_note": MEMORY_MODULE})
    site("newname", "0.2", {"worldkit.memory": {"same": "wk_same_note:Fake"}}, {})
    pair = [t for t in registry.twins() if "oldname 0.1" in t]
    assert pair and set(pair[0]) == {"oldname 0.1", "newname 0.2"}
    assert cli.main(["plugins", "--kind", "memory"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\nmemory") == len(registry.names("memory"))  # one row per plugin, the twin counted once
    assert "note:" not in out  # the table stays a table for whoever parses it
    assert "oldname 0.1" in err and "newname 0.2" in err and "pip uninstall" in err
