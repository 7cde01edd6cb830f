"""The stages of an experiment as they run: every plugin resolved, their folders' state, and what a
resumed run may change. Light (no Lightning import), so the CLI can check a resume before it starts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from worldkit.errors import WorldkitError
from worldkit.schema import TrainConfig


@dataclass
class Stage:
    """One training stage with every plugin resolved (stage overrides on top of the experiment's)."""

    index: int
    name: str
    trainer: dict
    memory: dict
    selector: dict
    attention: dict
    train: TrainConfig
    variant: bool = False  # a comparison variant: starts from the last stage's starting weights

    @property
    def dirname(self) -> str:
        return f"{self.index}-{self.name}"


def parse_dirname(dirname: str) -> tuple[int, str]:
    """A stage folder's name (``Stage.dirname``, ``<index>-<name>``) back into (index, name)."""
    index, _, name = dirname.partition("-")
    return int(index), name


def resolve_stages(cfg) -> list[Stage]:
    """The experiment's stages, then its comparison variants; an experiment without ``stages`` is one
    stage named ``train``. A variant's ``train`` overrides merge onto the last stage's budget."""
    top = dict(trainer=cfg.trainer, memory=cfg.memory, selector=cfg.selector, attention=cfg.attention)
    entries = list(cfg.stages) or [None]
    out = []
    for i, st in enumerate(entries + list(cfg.compare)):
        if st is None:
            out.append(Stage(0, "train", **{k: v.to_dict() for k, v in top.items()}, train=cfg.train))
            continue
        base = out[len(entries) - 1].train if i >= len(entries) else cfg.train
        specs = {k: (getattr(st, k, None) or top[k]).to_dict() for k in top}
        train = TrainConfig.model_validate({**base.model_dump(), **(st.train or {})})
        out.append(Stage(i, st.name, **specs, train=train, variant=i >= len(entries)))
    return out


def final_stage(cfg):
    """The run's result stage (``Stage``, plugins resolved): the last of its chain of stages, not a
    ``compare:`` variant (those are baselines trained beside it)."""
    return [st for st in resolve_stages(cfg) if not st.variant][-1]


def check_accelerator(cfg, resume: bool = False) -> None:
    """Every stage's train.accelerator is present on this machine (checked before a run folder is made,
    or changed). Lightning's 'gpu' is CUDA or Apple's MPS."""
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    present = {"gpu": cuda or mps, "cuda": cuda, "mps": mps}
    for stage in resolve_stages(cfg):
        acc = stage.train.accelerator
        if not present.get(acc, True):
            where = f"stage {stage.name}: " if cfg.stages or cfg.compare else ""
            advice = ("resume it on a machine that has one" if resume
                      else "run with --set train.accelerator=auto (or cpu)")
            raise WorldkitError(f"{where}train.accelerator={acc!r}, but this machine has no {acc.upper()} device "
                                f"that torch can use; {advice}")


FINISHED_FILES = ("model.pt", "eval.json", "summary.json")  # a stage folder holding all three is finished


def stage_finished(stage_dir: Path) -> bool:
    """Trained, evaluated and summarised: what a resumed run skips (summary.json is written last)."""
    return all((stage_dir / f).exists() for f in FINISHED_FILES)


def check_resume_budget(old, new, run_dir: Path) -> None:
    """A resumed run may change only the budget (max_steps, max_minutes) of stages it has not finished;
    anything else would relabel results that were computed under the old settings."""
    old_stages, new_stages = resolve_stages(old), resolve_stages(new)
    budget = ("max_steps", "max_minutes")
    per_stage = {"__all__": {"train"}}
    same = lambda c: c.model_dump(mode="json", exclude={"train": True, "stages": per_stage, "compare": per_stage})  # noqa: E731
    if same(old) != same(new) or len(old_stages) != len(new_stages):
        raise WorldkitError("--resume --set may change only a budget (train.max_steps, train.max_minutes, at the "
                            "top or per stage); start a new run for other changes")
    for a, b in zip(old_stages, new_stages):
        if a.train.model_dump(exclude=set(budget)) != b.train.model_dump(exclude=set(budget)):
            raise WorldkitError(f"--resume --set may change only a budget (train.max_steps, train.max_minutes); "
                                f"stage {a.name}: other train fields differ")
        changed = [f"train.{f}: {getattr(a.train, f)} -> {getattr(b.train, f)}" for f in budget
                   if getattr(a.train, f) != getattr(b.train, f)]
        if changed and stage_finished(run_dir / "stages" / a.dirname):
            raise WorldkitError(f"stage {a.name} has finished ({', '.join(changed)}): a new budget applies only to "
                                f"unfinished stages; start a new run (model.init: {run_dir / 'stages' / a.dirname / 'model.pt'}) "
                                "to train it further")
        if b.train.max_steps < a.train.max_steps:
            reached = checkpoint_step(run_dir / "stages" / a.dirname / "checkpoints" / "last.ckpt")
            if reached is not None and b.train.max_steps < reached:
                raise WorldkitError(f"stage {a.name}: train.max_steps={b.train.max_steps} is below the {reached} steps "
                                    f"its checkpoint has already trained; the results would be labelled with a budget "
                                    f"they exceed: give at least {reached}")


def checkpoint_step(path: Path):
    """The optimizer steps a Lightning checkpoint has taken, or None when there is none (or it is damaged)."""
    if not path.exists() or checkpoint_damage(path):
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", 0))


def checkpoint_damage(path: Path) -> Optional[str]:
    """What is wrong with a checkpoint file (torch's zip format, every member's CRC read), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return f"member {bad} does not match its CRC" if bad else None


def resumable_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint a resumed stage continues from: ``last.ckpt``, or ``best.ckpt`` (an earlier step:
    the steps after it are trained again, to the same weights) when ``last.ckpt`` is damaged; None when
    there is none to read (the stage starts over). A damaged file is said in one line on stderr."""
    import sys

    said = []
    for name in ("last.ckpt", "best.ckpt"):
        path = folder / name
        problem = checkpoint_damage(path) if path.exists() else None
        if path.exists() and problem is None:
            if said:
                print(f"warning: {said[0]}: damaged checkpoint ({said[1]}); resuming from {path} instead",
                      file=sys.stderr, flush=True)
            return path
        if problem and not said:
            said = [path, problem]
    if said:
        print(f"warning: {said[0]}: damaged checkpoint ({said[1]}) and no other to resume from; the stage "
              "starts over", file=sys.stderr, flush=True)
    return None
