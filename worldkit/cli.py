"""The ``worldkit`` command: run, eval, validate, plugins, data, report, analyze, play.

User errors (bad YAML, a missing file, validation issues, a broken plugin) print ``error: ...`` lines
to stderr and exit 2 without a traceback. Ctrl-C and SIGTERM stop a command the same way (a run saves
its checkpoint at the last completed step and names its resume command; ``worldkit.signals``) and exit
130 and 143. Heavy modules (the experiment runner,
data generation) are imported only by the commands that need them.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import List, Optional, Sequence

from worldkit import config, quiet, registry, signals, threads
from worldkit.errors import WorldkitError
from worldkit.interfaces import KINDS
from worldkit.schema import ExperimentConfig
from worldkit.stages import check_accelerator

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C; SIGTERM exits 143 (128 + the signal number)
RUN_DIR_VAR = "WORLDKIT_RUN_DIR"  # the run folder, for worker processes relaunched by DDP


def new_run_dir(cfg: ExperimentConfig, out: Optional[str] = None) -> Path:
    """A new, empty run folder: ``out`` if given (refused when it holds anything), else
    ``<out_root>/<name>-<YYYYmmdd-HHMMSS>`` with ``-1``, ``-2``... appended if that name is taken."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise WorldkitError(
                f"{path}: already exists and is not empty; a run never overwrites earlier results "
                "(pick another --out, or leave it out for a fresh timestamped folder)"
            )
        _make_folder(path, "--out", parents=True, exist_ok=True)
        return path
    base = Path(cfg.out_root) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _make_folder(base.parent, "out_root", parents=True, exist_ok=True)
    for i in itertools.count():
        path = base if i == 0 else base.with_name(f"{base.name}-{i}")
        try:
            _make_folder(path, "out_root")  # atomic: two runs starting in the same second get different folders
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _make_folder(path: Path, field: str, **kw) -> None:
    """``path.mkdir(**kw)``; a folder that cannot be made (not writable, a file in the way) is a user error."""
    try:
        path.mkdir(**kw)
    except FileExistsError:
        if path.is_dir():
            raise  # taken: the caller tries another name
        raise WorldkitError(f"{field}: cannot make the folder {path}: a file is in the way") from None
    except OSError as err:
        raise WorldkitError(f"{field}: cannot make the folder {path} ({err.strerror or err})") from None


def run_grid(path: Path, overrides: Sequence[str], grid_dir: Optional[Path], cfg: ExperimentConfig,
             out: Optional[str] = None) -> int:
    """Validate every cell of a grid experiment, then run its cells in a new grid folder (or resume ``grid_dir``)."""
    grid = import_module("worldkit.grid")
    g = grid.load(path, overrides)
    if grid_dir is None:
        warn_cells(g.cells, path)
        check_cells(g.cells, path, out)
        grid_dir = new_run_dir(cfg, out)
        grid.save_config(g, grid_dir)
        print(f"grid folder: {grid_dir} ({len(g.cells)} cells)", file=sys.stderr)
    results = import_module("worldkit.grid_run").run(g, grid_dir)
    print(Path(grid_dir, "results.md").read_text(), flush=True)
    failed = [c.name for c in results if c.status == "failed"]
    if failed:  # the grid went on past them; the exit status still says so
        print(f"error: {len(failed)} of {len(results)} cells failed ({', '.join(failed)}); their error.txt says why; "
              f"retry them with: worldkit run --resume {grid_dir}", file=sys.stderr)
        return 1
    return 0


def warn_unused(cfg: ExperimentConfig, source) -> None:
    """Settings that would have no effect (or less than asked): said on stderr, the run goes on. A grid's
    are its cells' (each cell is the experiment that runs)."""
    if cfg.grid:
        return
    for message in cfg.warnings():
        print(f"warning: {source}: {message}", file=sys.stderr)


def warn_cells(cells, source) -> None:
    for cell in cells:
        for message in cell.config.warnings():
            print(f"warning: {source} cell {cell.name}: {message}", file=sys.stderr)


def check_cells(cells, source, out: Optional[str] = None) -> None:
    """What a run would refuse in any cell (``worldkit.preflight``), every problem of every cell at once."""
    preflight = import_module("worldkit.preflight")
    found = [f"{source} cell {c.name}: {p}" for c in cells for p in preflight.problems(c.config, out)]
    if found:
        raise WorldkitError("\n".join(found))


def warn_accelerator(cfg: ExperimentConfig, source) -> None:
    """validate: a train.accelerator this machine lacks is said (the config may be meant for another)."""
    try:
        check_accelerator(cfg)
    except WorldkitError as err:
        print(f"warning: {source}: {str(err).split('; run with')[0]}: run refuses it on this machine", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Validate, create a new run folder, save the resolved config.yaml, run the experiment (or its grid)."""
    if args.resume is not None:
        if args.config or args.out:
            raise WorldkitError("--resume uses the run folder's own config.yaml: give no config file or --out")
        run_dir = Path(args.resume)
        cfg = config.load(run_dir / "config.yaml", args.overrides)
        check_accelerator(cfg, resume=True)
        if args.overrides:  # a new budget (--set train.max_steps=N): the folder records what ran
            if cfg.grid:
                raise WorldkitError("--resume of a grid takes no --set: each cell keeps the config it started with")
            from worldkit.stages import check_resume_budget

            check_resume_budget(config.load(run_dir / "config.yaml"), cfg, run_dir)
            config.save(cfg, run_dir / "config.yaml")
        if cfg.grid:
            return run_grid(run_dir / "config.yaml", [], run_dir, cfg)
        experiment = import_module("worldkit.experiment")
        experiment.run(cfg, run_dir, resume=True)
        return 0
    if args.config is None:
        raise WorldkitError("run: give an experiment YAML (or --resume RUN_DIR)")
    cfg = config.load(args.config, args.overrides)
    if not os.environ.get(RUN_DIR_VAR):
        warn_unused(cfg, args.config)
    check_accelerator(cfg)
    if cfg.grid:
        return run_grid(Path(args.config), args.overrides, None, cfg, args.out)
    inherited = os.environ.get(RUN_DIR_VAR)
    if not inherited:  # a missing checkpoint, a trainer that cannot start, ...: refused before a folder is made
        import_module("worldkit.preflight").check(cfg, args.out, args.config)
    experiment = import_module("worldkit.experiment")  # before the folder, so a failed import leaves none
    if inherited:  # a worker that multi-device training relaunched with this command line
        experiment.run(cfg, Path(inherited), resume=True)
        return 0
    run_dir = new_run_dir(cfg, args.out)
    config.save(cfg, run_dir / "config.yaml")
    print(f"run folder: {run_dir}", file=sys.stderr)
    os.environ[RUN_DIR_VAR] = str(run_dir)  # inherited by DDP workers relaunched during the run
    try:
        experiment.run(cfg, run_dir)
    finally:
        del os.environ[RUN_DIR_VAR]
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Score one set of weights, as they are, under every stage's and variant's plugins of an experiment."""
    cfg = config.load_for_eval(args.config, args.weights, args.overrides)
    warn_unused(cfg, args.config)
    from worldkit.checkpoints import read_checkpoint, resolve_init

    read_checkpoint(resolve_init(args.weights))  # a bad path fails before a folder is made
    run_dir = new_run_dir(cfg.model_copy(update={"name": f"{cfg.name}-eval"}), args.out)
    config.save(cfg, run_dir / "config.yaml")
    print(f"eval folder: {run_dir}", file=sys.stderr)
    try:
        import_module("worldkit.experiment").evaluate_weights(cfg, args.weights, run_dir)
    except KeyboardInterrupt:
        raise signals.interrupt(f"stopped; the stages evaluated so far are in {run_dir}/stages") from None
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the resolved config, or every error: the config's, and what a run would refuse before it
    starts (``worldkit.preflight``); for a grid, also validate and list every cell."""
    cfg = config.load(args.config, args.overrides)
    warn_unused(cfg, args.config)
    cells = import_module("worldkit.grid").load(args.config, args.overrides).cells if cfg.grid else []
    warn_cells(cells, args.config)
    if cells:
        check_cells(cells, args.config)
    else:
        import_module("worldkit.preflight").check(cfg, source=args.config)
    for c in cells or [None]:
        warn_accelerator(c.config if c else cfg, f"{args.config} cell {c.name}" if c else args.config)
    sys.stdout.write(config.to_yaml(cfg))
    if cells:
        sys.stdout.write(f"# {len(cells)} cells, each valid:\n" + "".join(f"#   {c.name}\n" for c in cells))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Generate (or find cached) the episodes the experiment (every cell of a grid) trains and evaluates on."""
    cfg = config.load(args.config, args.overrides)
    cfgs = [cfg]
    if cfg.grid:
        cfgs = [c.config for c in import_module("worldkit.grid").load(args.config, args.overrides).cells]
    for c in cfgs:
        paths = import_module("worldkit.data").prepare(c)
        for split, path in paths.items():  # generated or found in the cache: where the episodes are
            print(f"{split}: {path}")
    return 0


def cmd_analyze_attention(args: argparse.Namespace) -> int:
    """Capture block-level attention during a rollout and report Sparse Forcing's two observations."""
    res = import_module("worldkit.analysis").analyze_run(args.run_dir, args.episodes, args.window, args.horizon, args.stage)
    print(f"model: {res['model']}")
    print(f"local window: top 25% of blocks hold {100 * res['local_top25_mass']:.1f}% of the window's attention "
          f"(uniform: 25%)")
    print(f"history: {100 * res['history_top_persistence']:.1f}% of the top history blocks stay on top at the next "
          f"chunk (chance: {100 * res['history_top_persistence_chance']:.1f}%)")
    print(f"heatmaps and attention.json in {res['out']}; TensorBoard: {Path(args.run_dir) / 'tb'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild a grid folder's results.csv, results.md and plots from its cell folders; print the table."""
    sys.stdout.write(import_module("worldkit.report").build(args.grid_dir))
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    """Play a world model in a local web page (``worldkit.play``): served on 127.0.0.1 until Ctrl-C."""
    return import_module("worldkit.play").main(args)


def plugin_table(kind: Optional[str] = None) -> str:
    """Every plugin as a table: kind, name, origin distribution and version, description or error."""
    rows = [("KIND", "NAME", "ORIGIN", "DESCRIPTION")]
    for e in registry.entries(kind):
        rows.append((e.kind, e.name, e.origin, (e.description or "-") if e.ok else f"BROKEN: {e.error}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def twin_notes() -> List[str]:
    """One line per pair of distributions that register the same plugins (e.g. metadata left by a rename)."""
    return [f"note: {a} and {b} register the same plugins (counted once); one is likely left behind by a "
            f"reinstall under another name. Both may list the same files: pip uninstall both, then install "
            f"the one you use again" for a, b in registry.twins()]


def cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins on stdout (broken ones with their import error); notes on a stale install go to stderr."""
    sys.stdout.write(plugin_table(args.kind))
    for line in twin_notes():
        print(line, file=sys.stderr)
    return 0


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="experiment YAML")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a field by dotted path, VALUE parsed as YAML (e.g. model.width=256, "
        "eval.horizons=[1,4], memory.type=sink, stages[1].train.lr=1e-4); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    try:
        from worldkit import DISTRIBUTION

        ver = version(DISTRIBUTION)
    except PackageNotFoundError:
        ver = "unknown"
    parser = argparse.ArgumentParser(prog="worldkit", description="Autoregressive video-diffusion world models.")
    parser.add_argument("--version", action="version", version=f"worldkit {ver}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="validate an experiment and run it in a new run folder")
    _add_config_args(p, required=False)
    p.add_argument("--out", help="run folder to create (must not exist or be empty)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR with its saved config.yaml (--set changes it, e.g. the budget)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="score one set of weights, as they are, under every stage's and variant's plugins")
    p.add_argument("weights", metavar="WEIGHTS", help="a model.pt or a shipped name such as base/revisit_room")
    _add_config_args(p)
    p.add_argument("--out", help="folder to create for the results (must not exist or be empty)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("validate", help="print the resolved config, or every error")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plugins", help="list installed plugins with their origin")
    p.add_argument("--kind", choices=list(KINDS), help="only this kind")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("data", help="generate and cache the experiment's episodes")
    _add_config_args(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("analyze", help="analyses of a finished run")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = what.add_parser("attention", help="block-attention maps: local concentration and persistent stripes")
    q.add_argument("run_dir", metavar="RUN_DIR")
    q.add_argument("--episodes", type=int, default=4, help="test episodes to roll out (default 4)")
    q.add_argument("--window", type=int, default=6, help="local window in frames (default 6, the paper's)")
    q.add_argument("--horizon", type=int, default=None,
                   help="rollout length in training clips (default 4, or the run's longest eval horizon if shorter)")
    q.add_argument("--stage", default=None, help="the stage to analyze, by name (default: the run's last stage, "
                                                  "not a comparison variant)")
    q.set_defaults(func=cmd_analyze_attention)

    p = sub.add_parser("report", help="rebuild a grid folder's results tables and plots from its cells")
    p.add_argument("grid_dir", metavar="GRID_DIR", help="the folder `worldkit run` made for a grid experiment")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("play", help="play a world model in a local web page: keys act, the simulator beside it on request")
    p.add_argument("weights", metavar="WEIGHTS", help="a model.pt or a shipped name such as base/revisit_room")
    p.add_argument("--env", help="the environment to play in (default: the one the weights' model card or run names)")
    p.add_argument("--memory", default="sliding_window",
                   help="memory policy to start with (switchable on the page): dense, sliding_window (9 frames), sink, "
                        "persistent_block (sink 1, persistent 2, window 6) or any installed one (default sliding_window)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: a free one)")
    p.add_argument("--fps", type=float, default=25.0,
                   help="frames shown per second at most (default 25; 0: as fast as the model generates them)")
    p.add_argument("--context", type=int, default=10,
                   help="true frames of a test episode the model starts from (a multiple of the chunk; default 10)")
    p.add_argument("--episodes", type=int, default=4, help="test episodes to choose from on the page (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise (default 0)")
    p.add_argument("--out", default="play_recordings", help="folder for recordings (default play_recordings/)")
    p.set_defaults(func=cmd_play)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``worldkit`` console script; returns the exit code."""
    threads.configure()  # before torch is imported: waiting OpenMP threads sleep (worldkit.threads)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors exit 2, --help / --version exit 0
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    quiet.install()  # Lightning's advertisement and known harmless notices left out; real warnings kept
    try:
        with signals.handled():
            return args.func(args)
    except WorldkitError as err:
        for line in err.lines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as stop:
        print(f"worldkit: {signals.describe()}{f' ({stop})' if str(stop) else ''}", file=sys.stderr)
        return signals.exit_code(EXIT_INTERRUPTED)
