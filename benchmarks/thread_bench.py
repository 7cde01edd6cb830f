"""Training steps per second by thread count and OpenMP wait policy, on idle cores and beside one
CPU-bound process (what a shared machine, or a second job, does to a run).

    python benchmarks/thread_bench.py [--threads 1 2] [--policies default PASSIVE] [--loads idle busy]
                                      [--steps 3] [--out FILE]

Each cell trains the first stage of an experiment (default: the self-forcing pendulum job, from its
shipped base) in a fresh process whose environment sets ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY``
("default": unset, OpenMP's own; the worldkit command sets PASSIVE where it is unset, see
worldkit/threads.py). After ``--warmup`` steps it times ``--steps`` steps from the start to the end of
each training batch; a cell that runs past ``--cell-seconds`` reports the steps it finished. "busy":
one process spinning on the CPU for the whole cell. Prints a markdown table (steps/s, idle and busy, and
the slowdown) and writes it to ``--out`` when given; the load average at the start of each cell says
whether the cores were idle indeed (another job running makes every cell a busy one). ``--tiny``: a toy
model and data, for tests.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ROOT / "experiments" / "self_forcing_pendulum.yaml"
SMALL_DATA = ["data.train_episodes=32", "data.val_episodes=4", "data.test_episodes=4"]  # steps cost the same
TINY = ["env.size=16", "model.patch=4", "model.width=32", "model.layers=2", "model.heads=2", "model.init=null",
        "train.batch_size=2", "train.clip_frames=6", "data.episode_frames=8", "data.train_episodes=4",
        "data.val_episodes=2", "data.test_episodes=2", "eval.context_frames=2", "memory.window_frames=4",
        "compare[0].memory.window_frames=6", "eval.horizons=[1]"]
BUSY = "while True: pass"
STEP_LINE = re.compile(r'\{"step": \d+, "seconds": [0-9.e-]+\}')


def child(config: str, overrides: list[str], steps: int, warmup: int, workdir: str) -> None:
    """In the cell's process: train the first stage for warmup + steps and print one JSON line per timed
    step ({"step": i, "seconds": s}), then {"done": true}."""
    import lightning as L

    from worldkit import config as wk_config
    from worldkit import experiment
    from worldkit.checkpoints import resolve_init
    from worldkit.stages import resolve_stages

    total = warmup + steps
    cfg = wk_config.load(config, [*overrides, f"train.max_steps={total}", f"train.val_every={total}",
                                  "train.eval_every=null", "train.max_minutes=null"])
    stage = resolve_stages(cfg)[0]
    init = resolve_init(cfg.model.init) if cfg.model.init else None
    data = experiment.RunData(cfg)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *args):
            seconds = time.perf_counter() - self.t0
            if trainer.global_step > warmup:
                print("\n" + json.dumps({"step": trainer.global_step - warmup, "seconds": seconds}), flush=True)

    orig = experiment.make_trainer
    experiment.make_trainer = lambda tr, d, cbs, lg, val_batches=None: orig(
        tr, d, [*cbs, Timer()], lg, val_batches=1)
    experiment.fit_stage(cfg, stage, data, Path(workdir), init=init, resume=False)
    print(json.dumps({"done": True}), flush=True)


def cell(args, threads: int, policy: str, busy: bool) -> dict:
    """Run one cell in a fresh process; returns {"steps": n, "seconds": s, "cut": bool, "load": the 1-minute
    load average when it started (what else the machine was running)}."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = str(threads)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    load = os.getloadavg()[0]
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    times, cut = [], False
    try:
        with tempfile.TemporaryDirectory() as work:
            cmd = [sys.executable, __file__, "--child", "--config", args.config, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--workdir", work, *(a for o in args.overrides for a in ("--set", o))]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            deadline = time.time() + args.cell_seconds
            try:
                for line in proc.stdout:
                    for found in STEP_LINE.findall(line):  # the progress bar may share the line
                        times.append(json.loads(found)["seconds"])
                    if time.time() > deadline:
                        cut = True
                        break
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return {"steps": len(times), "seconds": sum(times), "cut": cut, "load": load}


def rate(r: dict) -> str:
    if r.get("skipped"):
        return "-"
    if not r["steps"]:
        return "no step done"
    return f"{r['steps'] / r['seconds']:.3g}" + (f" ({r['steps']} steps, cut)" if r["cut"] else "")


def table(results: dict, threads: list[int], policies: list[str]) -> str:
    lines = ["| threads | wait policy | idle cores: steps/s | one busy core: steps/s | slowdown | load avg at start |",
             "|---|---|---|---|---|---|"]
    for t in threads:
        for p in policies:
            none = {"steps": 0, "seconds": 0.0, "cut": False, "skipped": True}
            idle, busy = results.get((t, p, False), none), results.get((t, p, True), none)
            slow = "-"
            if idle["steps"] and busy["steps"]:
                slow = f"{(busy['seconds'] / busy['steps']) / (idle['seconds'] / idle['steps']):.1f}x"
            loads = " / ".join(f"{r['load']:.1f}" for r in (idle, busy) if "load" in r)
            lines.append(f"| {t} | {p} | {rate(idle)} | {rate(busy)} | {slow} | {loads} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(MAIN_JOB))
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--policies", nargs="+", default=["default", "PASSIVE"], help="OMP_WAIT_POLICY values, or default")
    p.add_argument("--loads", nargs="+", choices=["idle", "busy"], default=["idle", "busy"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cell-seconds", type=float, default=240, help="a cell stops here with the steps it finished")
    p.add_argument("--tiny", action="store_true", help="a toy model and data (tests)")
    p.add_argument("--out")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.overrides is None:
        a.overrides = SMALL_DATA + (TINY if a.tiny else [])
    if a.child:
        child(a.config, a.overrides, a.steps, a.warmup, a.workdir)
        return ""
    from worldkit import config as wk_config
    from worldkit import data as wk_data

    wk_data.prepare(wk_config.load(a.config, a.overrides), progress=False)  # the episodes once, before any cell
    results = {}
    for t in a.threads:
        for pol in a.policies:
            for busy in (load == "busy" for load in a.loads):
                results[t, pol, busy] = cell(a, t, pol, busy)
                print(f"threads={t} policy={pol} {'busy' if busy else 'idle'}: {rate(results[t, pol, busy])}",
                      file=sys.stderr, flush=True)
    cores = os.cpu_count()
    md = (f"Training steps/s of `{Path(a.config).name}` (first stage; --set {' '.join(a.overrides)}) on {cores} "
          f"cores; {a.steps} timed steps after {a.warmup}; busy: one process spinning on one core.\n\n"
          + table(results, a.threads, a.policies))
    print(md)
    if a.out:
        Path(a.out).write_text(md + "\n")
    return md


if __name__ == "__main__":
    main()
