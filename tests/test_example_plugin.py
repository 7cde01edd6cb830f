"""The third-party example package (examples/worldkit-example-plugin), installed for real: worldkit
finds its ``every_other`` memory policy through the entry-point group, lists it with its origin, and
validates a YAML that uses it; the policy keeps what it says it keeps."""
from __future__ import annotations

import re
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version

import pytest
import torch

from worldkit import cli, config, registry
from worldkit.interfaces import KINDS, CacheSpec, MemoryPolicy, PluginConfig
from worldkit.testing import check_memory_policy, check_visibility

DIST = "worldkit-example-plugin"


@pytest.fixture(scope="module", autouse=True)
def installed():
    try:
        return version(DIST)
    except PackageNotFoundError:
        pytest.fail(f"{DIST} is not installed: pip install -e examples/worldkit-example-plugin (see README.md)")


def test_plugins_lists_it_with_its_origin(capsys, installed):
    assert cli.main(["plugins", "--kind", "memory"]) == 0
    rows = [re.split(r"\s{2,}", line) for line in capsys.readouterr().out.splitlines()]
    (row,) = [r for r in rows if r[1] == "every_other"]
    assert row[0] == "memory" and row[2] == f"{DIST} {installed}"
    assert row[3].startswith("Keep every other committed chunk")
    cls = registry.get("memory", "every_other")
    assert issubclass(cls, MemoryPolicy) and cls.__module__ == "worldkit_example_plugin.every_other"


def stand_in(kind: str) -> type:
    base = KINDS[kind]
    methods = {m: (lambda self, *a, **k: None) for m in base.__abstractmethods__}
    return type(f"StandIn{kind.title()}", (base,), {"Config": PluginConfig, **methods})


def test_a_yaml_using_it_validates(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: ext\nenv: {type: toy}\nmemory: {type: every_other, max_chunks: 3}\n")
    with ExitStack() as stack:  # the other plugin fields get stand-ins; only memory is under test
        others = [("env", "toy"), ("selector", "all"), ("attention", "sdpa"), ("trainer", "diffusion_forcing")]
        for kind, name in others:
            stack.enter_context(registry.register(kind, name, stand_in(kind), replace=True))
        cfg = config.load(path)
        assert cfg.memory.type == "every_other" and cfg.memory.config.max_chunks == 3
        assert cfg.memory.to_dict() == {"type": "every_other", "max_chunks": 3}
        assert isinstance(cfg.memory.build(), registry.get("memory", "every_other"))
        with pytest.raises(Exception, match="memory.max_chunks"):
            config.load(path, ["memory.max_chunks=0"])


SPEC = CacheSpec(layers=2, batch=1, heads=2, head_dim=4, block_tokens=4, blocks_per_frame=2, chunk_frames=2,
                 train_frames=16, dtype=torch.float32, device=torch.device("cpu"))
TOKENS = SPEC.chunk_frames * SPEC.blocks_per_frame * SPEC.block_tokens


def rollout(chunks: int, max_chunks: int) -> MemoryPolicy:
    """A policy after committing ``chunks`` chunks whose keys and values hold their chunk index."""
    policy = registry.build("memory", "every_other", {"max_chunks": max_chunks})
    policy.reset(SPEC)
    for c in range(chunks):
        kv = torch.full((SPEC.layers, SPEC.batch, SPEC.heads, TOKENS, SPEC.head_dim), float(c))  # (L, B, H, Tc, D)
        pooled_q = torch.zeros(SPEC.layers, SPEC.batch, SPEC.heads, SPEC.chunk_blocks, SPEC.head_dim)
        policy.commit(kv, kv, pooled_q)
    return policy


def test_keeps_every_other_chunk_up_to_its_cap():
    policy = rollout(chunks=6, max_chunks=2)  # chunks 0, 2, 4 kept in turn; the cap evicts 0
    view = policy.view(layer=1)
    frames = view.slot_frame[0, view.local].tolist()
    assert frames == [4, 4, 5, 5, 8, 8, 9, 9]  # chunks 2 and 4, oldest first, 2 blocks per frame
    assert sorted(set(view.k[0, view.local].flatten().tolist())) == [2.0, 4.0]
    assert view.query_pos == 12.0 and view.always.numel() == 0
    per_slot = 2 * SPEC.layers * SPEC.batch * SPEC.heads * SPEC.block_tokens * SPEC.head_dim * 4  # K+V, fp32
    assert policy.nbytes() == 8 * per_slot
    assert rollout(chunks=40, max_chunks=2).nbytes() == policy.nbytes()  # bounded over any horizon


def test_training_mask_matches_the_rollout_view():
    check_visibility(registry.build("memory", "every_other", {"max_chunks": 2}), SPEC, 12)


@pytest.mark.parametrize("max_chunks", [1, 2, 4])
def test_meets_the_memory_policy_contract(max_chunks):
    """The contract test the package's README shows, on the installed plugin."""
    check_memory_policy(registry.get("memory", "every_other"), {"max_chunks": max_chunks})
