# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # worldkit quickstart: one world model, two memories
#
# A world model generates video chunk by chunk, reading what it keeps of the past from a KV cache. How
# it keeps the past is a *memory policy*. This walk-through loads the shipped `base/revisit_room` (a
# camera turns away from coloured objects and comes back after 4 to 64 frames; a hue band shows its
# heading), rolls it out under two policies with the same KV budget, looks at the frames and compares how
# often each brings the objects back.
#
# Run it as a script (`python examples/quickstart.py`, about 6 s on 2 CPU cores), or open it as a
# notebook with jupytext.

# %%
import os

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt

import worldkit.api as wk

OUT = os.environ.get("QUICKSTART_OUT", "quickstart_out")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## Load the weights and record a few episodes
#
# `wk.load` takes a shipped name or a run's `model.pt`; the model card (or the run's config) says which
# environment the weights model. `episodes` records test episodes of it (the same seeds the
# experiments' test split uses, cached).

# %%
world = wk.load("base/revisit_room")
n_eps, context = 8, 10
eps = world.episodes(n_eps, frames=context + 64)
print(world.model.hparams, len(eps), "episodes of", eps.frames.shape[1], "frames")

# %% [markdown]
# ## Roll out under two memory policies
#
# A 9-frame sliding window, and Sparse Forcing's persistent block memory read densely (1 sink frame,
# 2 frames' worth of blocks kept by attention score, a 6-frame window): both keep 7 frames of KV.
# Teacher forcing commits the true frames after each generated chunk, so the comparison is about what
# each memory keeps, not about drift.

# %%
policies = {
    "window_9": {"type": "sliding_window", "window_frames": 9},
    "persistent_block": {"type": "persistent_block", "sink_frames": 1, "persistent_frames": 2, "window_frames": 6},
}
runs = {name: world.rollout(eps, memory=spec, context_frames=context, teacher_forced=True)
        for name, spec in policies.items()}
for name, r in runs.items():
    print(f"{name:18s} {sum(r.ms_per_chunk) / len(r.ms_per_chunk):7.1f} ms/chunk   "
          f"KV {r.kv_bytes[-1] / 2**20:.2f} MiB per sequence")

# %% [markdown]
# ## Look at the frames
#
# The truth on top, then each policy, every fourth generated frame of the first episode.

# %%
truth = eps.images()[0, context:]
rows = [("truth", truth)] + [(name, r.images()[0]) for name, r in runs.items()]
cols = list(range(0, truth.shape[0], 4))
fig, axes = plt.subplots(len(rows), len(cols), figsize=(len(cols) * 0.9, len(rows) * 1.0))
for i, (name, frames) in enumerate(rows):
    for j, t in enumerate(cols):
        axes[i, j].imshow(frames[t])
        axes[i, j].set_xticks([])
        axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(name, rotation=0, ha="right", fontsize=8)
fig.savefig(f"{OUT}/frames.png", dpi=100, bbox_inches="tight")

# %% [markdown]
# ## Compare recall
#
# At each return, is the right palette colour at the right place? Mean over the episodes per gap; the
# truth is the ceiling, persistence (freeze the last context frame) and the oracle (paste the last real
# sighting) are the trivial and the perfect memory.

# %%
rec = world.recall(eps, runs)
colour = rec["stats"]["colour"]
print("gap bucket        ", "  ".join(f"{b:>12s}" for b in rec["buckets"]))
for name in [*runs, "persistence", "oracle", "truth"]:
    print(f"{name:18s}", "  ".join(f"{m:12.2f}" for m, _ in colour[name]))

# %% [markdown]
# ## Plot recall against the gap

# %%
fig, ax = plt.subplots(figsize=(5, 3))
for name in [*runs, "persistence", "oracle"]:
    means = [m for m, _ in colour[name]]
    ax.plot(rec["gaps"], means, marker="o", label=name)
ax.set_xscale("log", base=2)
ax.set_xlabel("frames away")
ax.set_ylabel("recall")
ax.legend(fontsize=7)
fig.savefig(f"{OUT}/recall.png", dpi=100, bbox_inches="tight")
print("figures in", OUT)

# %% [markdown]
# ## Next
#
# - Every installed memory policy, selector and attention backend plugs into `world.rollout` by name.
# - `world.evaluate("experiments/sparse_forcing.yaml", "runs/mine")` scores the weights under the main
#   job's nine policies and writes the full tables, strips and GIFs there, as `worldkit eval` does.
