"""Everything after the checks: the timings, the block selection, the profile and (last) Flex
max-autotune, printed and written as the markdown section RESULTS.md collects (``report``,
``write_section``)."""
from __future__ import annotations

import datetime
import time
from pathlib import Path

from worldkit_kernels.choices import kernel_choices

from . import problem
from .measure import short_error
from .profiling import launch_cost, profile, profile_selection
from .tables import table, targets
from .timing import Stopped, selection_timings, timings_until_stopped

ROOT = Path(__file__).resolve().parents[2]


def report(args, frames, blocks, densities, machine, start) -> int:
    """Timings, targets, block-selection timings, the tuner's choices and the profile, then (--flex-autotune)
    Flex max-autotune, whose compile takes the longest, last: printed, and with --out / --write written as
    a markdown section (with --out also before max-autotune starts; marked partial when stopped; exit 1
    when the gate failed)."""
    rows, stopped = timings_until_stopped(frames, blocks, densities, backward=args.backward)
    notes = []  # the sections after the table, in order
    if not stopped:
        print("== block selection at 25 % density")
        try:
            notes.append("Block selection at 25 % density (PyTorch; and with the fused Triton top-K kernel), beside "
                         "PBSA's forward (median ms), and which one `local_window`'s `impl: auto` keeps:\n\n"
                         + selection_timings(frames, blocks, rows))
        except Stopped:
            stopped = "stopped by SIGTERM before every row was measured"
        except Exception as e:  # the timings above are worth more than the selection's
            notes.append(f"(Block selection timings failed: {short_error(e, 200)})")
    if getattr(args, "profile", False) and not stopped:
        f0, b0 = frames[0], blocks[0]
        print(f"== profile: {f0} frames, block {b0}, 25 % density")
        try:
            notes.append(f"PBSA forward with the fused block selection, kernel by kernel (torch.profiler, {f0} frames, "
                         f"block {b0}, 25 % density):\n\n" + profile_selection(f0, b0))
            if args.backward:
                notes.append(f"PBSA forward + backward kernel by kernel ({f0} frames, block {b0}, 25 % density):"
                             "\n\n" + profile(f0, b0))
            notes.append("The CPU cost of issuing PBSA calls:\n\n" + launch_cost(f0, b0, backward=args.backward)
                         + "\n\n" + launch_cost(f0, b0, density=0.25, backward=args.backward))
        except Stopped:
            notes.append("(The profile was stopped before it finished.)")
        except Exception as e:  # the timings above are worth more than the profile
            notes.append(f"(The profile failed: {short_error(e, 200)})")
    section = write_section(args, rows, stopped, notes, frames, blocks, machine)
    if args.flex_autotune and not stopped:
        print("== Flex compiled with max-autotune (forward), last: its compile takes the longest")
        more, stopped = timings_until_stopped(frames, blocks, densities, backward=False, methods=("flex max-autotune",))
        rows += more
        section = write_section(args, rows, stopped, notes, frames, blocks, machine)
    print(section)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.write:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(section)
        print("appended to benchmarks/RESULTS.md")
    return 1 if stopped and "gate" in stopped else 0


def write_section(args, rows, stopped, notes, frames, blocks, machine) -> str:
    """The markdown section: what ran where, the table, the targets, ``notes``, the kernels' choices;
    written to --out when given."""
    chosen = kernel_choices()  # what the kernels loaded in this process kept
    ms = lambda t: "inf" if t is None else f"{t:.3f}"  # noqa: E731  (None: the candidate failed)
    tuned = [e for e in chosen["pbsa"] if e["tuned"]]
    parts = [table(rows), f"Against the issue's targets ({frames[0]} frames, block {blocks[0]}, forward; speedups "
             "against SDPA of the same run):\n\n" + targets(rows, frames[0], blocks[0])]
    if stopped:
        parts.append(f"(Partial: {stopped}.)")
    parts += notes
    parts.append("Launch configurations the tuner kept (per problem class):\n\n" + (
        "\n".join(dict.fromkeys(f"- {e['class']}: {e['kept']}" for e in tuned)) or "- none (tuning off)"))
    times = "\n".join(f"- {e['class']}: " + "; ".join(
        f"{c} {ms(t)}" for c, t in sorted(e["timings_ms"].items(), key=lambda r: float("inf") if r[1] is None else r[1]))
        for e in tuned if "timings_ms" in e)
    if times:
        parts.append("Every candidate the tuner timed, fastest first (median ms of 10 launches, each after an L2 "
                     "flush):\n\n" + times)
    picks = "\n".join(
        f"- {e['class']}: " + ", ".join(f"{impl} {ms(t)}" for impl, t in e["timings_ms"].items()) + f"; keeps {e['kept']}"
        + (f" ({e['kernel_failed']})" if "kernel_failed" in e else "") for e in chosen["selection"])
    if picks:
        parts.append("Block selection with `impl: auto`, per problem class: ms per call of 20 calls back to back "
                     "(not the table's method: one call after an L2 flush), and the one kept:\n\n" + picks)
    cmd = getattr(args, "cmd", "python benchmarks/kernel_bench.py")
    gated = ("The correctness gate FAILED (below): the timings stopped there. " if stopped and "gate" in stopped
             else "Every PBSA problem passed the gate before it was timed ")
    section = (
        f"\n## PBSA kernel, {datetime.date.today()}\n\n{machine}; {str(problem.DTYPE).removeprefix('torch.')}; `{cmd}`; "
        f"chunk of {problem.CHUNK_FRAMES} x {problem.TOKENS_PER_FRAME} tokens, {problem.HEADS} heads x "
        f"{problem.HEAD_DIM}; key sequence of F frames including the chunk. {gated}(gate: error against fp64 <= 2x "
        f"SDPA's in the same dtype + 2^-10 of the largest reference value; output"
        f"{' and gradients' if args.backward else ''}). TFLOP/s: computed blocks only for PBSA and Flex, "
        "all keys for SDPA; forward+backward counted as 3.5x the forward. Speedups against SDPA flash and cuDNN on "
        "the full keys, same pass, same process. `pbsa + ... selection`: the forward including the block selection "
        "that makes its lists (all keys pooled).\n\n" + "\n\n".join(parts) + "\n"
    )
    if args.out:
        args.out.write_text(section)
    return section
