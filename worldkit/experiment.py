"""Running an experiment: data, the training stages, evaluation after each stage, then the run's summary
(written by ``run_summary``).

A run folder holds ``config.yaml``, one folder per stage (``stages/<i>-<name>/``: Lightning checkpoints,
``model.pt`` when the stage is finished, ``eval.json`` and ``strips.png``), TensorBoard event files
under ``tb/`` and the summary (``results.csv``, ``results.md``). ``resume=True`` skips finished stages
and continues the unfinished one from its ``last.ckpt``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch

from worldkit import data as wk_data
from worldkit import registry, signals, tensorboard_log
from worldkit.checkpoints import READ_TIME_SETTINGS, load_model, load_weights, resolve_init, save_weights
from worldkit.errors import WorldkitError
from worldkit.interfaces import MODEL_KINDS, STAGE_KINDS, Environment
from worldkit.evaluate import EvalResult, evaluate
from worldkit.files import atomic_write
from worldkit.frames import frames_to_tensor
from worldkit.rollout import Rollout
from worldkit.run_summary import write_summary
from worldkit.stages import Stage, resolve_stages, resumable_checkpoint, stage_finished  # noqa: F401  (re-exported)
from worldkit.training import ResumableData, SaveOnInterrupt, WorldModule, make_trainer

# --------------------------------------------------------------------------------------------------


class RunData:
    """The experiment's train / val / test episodes, their clip datasets and reference frames."""

    def __init__(self, cfg):
        name, env_cfg = cfg.env.type, cfg.env.config.model_dump(mode="json")
        self.sets = {
            split: wk_data.load_split(name, env_cfg, split, n, frames, cfg.data.cache_dir, cfg.data.workers)
            for split, (n, frames) in wk_data.split_requests(cfg).items()
        }
        train = self.sets["train"]
        self.frame_size = train.frames.shape[2]
        self.action_dim = train.actions.shape[2]
        sample = frames_to_tensor(train.frames[:, :: max(1, train.frames.shape[1] // 8)])  # (N, T', 3, H, W)
        self.mean_frame = sample.mean((0, 1))  # (3, H, W)
        self.background = sample.flatten(0, 1).median(0).values  # (3, H, W)
        self.train_file = wk_data.cache_path(name, env_cfg, "train", *wk_data.split_requests(cfg)["train"], cfg.data.cache_dir)
        self.probe_steps = cfg.eval.probe_steps
        self._probe = None
        env_cls = registry.get("env", name)
        env_config = env_cls.Config(**env_cfg)
        # what one frame shows of the simulator state: what the probe reads and forecasts are scored on
        self.seen_states = {split: env_cls.observable(env_config, s.states) for split, s in self.sets.items()}
        # where the objects to recall are in the test episodes (None: the env has nothing to recall)
        self.recall_targets = env_cls.recall_targets(env_config, self.sets["test"].states)
        # the simulator's step on what a frame shows, for the physics residual (None: the env has none)
        stepped = env_cls.observable_step.__func__ is not Environment.observable_step.__func__
        self.observable_step = (lambda obs, act: env_cls.observable_step(env_config, obs, act)) if stepped else None
        self._reference = None

    @property
    def probe(self):
        """The state probe of the training episodes (trained on first use, cached beside them)."""
        if self._probe is None and self.probe_steps:
            from worldkit.probe import cached_probe

            train = self.sets["train"]
            self._probe = cached_probe(self.train_file, train.frames, self.seen_states["train"], steps=self.probe_steps)
        return self._probe

    def reference_features(self, pairs: int = 2048):
        """Probe features of a fixed sample of real training frames (each read with the frame before
        it): the reference of the Fréchet distance. None without a probe."""
        if self._reference is None and self.probe is not None:
            from worldkit.quality import probe_features

            train = self.sets["train"]
            g = np.random.default_rng(0)
            e = g.integers(0, len(train), pairs)
            t = g.integers(1, train.num_frames, pairs)
            prev, cur = frames_to_tensor(train.frames[e, t - 1]), frames_to_tensor(train.frames[e, t])  # (P, 3, H, W)
            self._reference = probe_features(self.probe, cur[:, None], prev)[:, 0]  # (P, F)
        return self._reference

    def clips(self, split: str, clip_frames: int):
        return wk_data.ClipDataset(self.sets[split], clip_frames, stride=1 if split == "train" else clip_frames)


def make_module(cfg, stage: Stage, d: RunData) -> WorldModule:
    return WorldModule(
        model=cfg.model.network(frame_size=d.frame_size, action_dim=d.action_dim), trainer=stage.trainer, memory=stage.memory, selector=stage.selector,
        attention=stage.attention, train=stage.train.model_dump(),
        sampler=dict(steps=cfg.model.sampler_steps, shift=cfg.model.shift), seed=cfg.seed + stage.index,
    )


def evaluate_model(cfg, model, memory: dict, selector: dict, attention: dict, d: RunData,
                   out_dir: Optional[Path], desc: str = "eval", train_frames: Optional[int] = None) -> EvalResult:
    """Long-horizon evaluation of ``model`` with the given plugins on the test episodes. Horizons count
    in the experiment's ``train.clip_frames`` (the same frames for every stage); ``train_frames``, the
    clip the stage trained on (default: the experiment's), sets the memory's default windows as in training."""
    test = d.sets["test"]
    n = min(cfg.eval.episodes, len(test))
    rollout = Rollout(
        model, registry.build("memory", memory), registry.build("selector", selector), registry.build("attention", attention),
        steps=cfg.model.sampler_steps, shift=cfg.model.shift, train_frames=train_frames or cfg.train.clip_frames,
    )
    model.eval()
    return evaluate(
        rollout, test.frames[:n], test.actions[:n], cfg.eval.horizons, cfg.train.clip_frames,
        cfg.eval.context_frames, d.mean_frame, d.background, seeds=cfg.eval.seeds, out_dir=out_dir,
        strips=cfg.eval.strips, desc=desc, probe=d.probe, states=d.seen_states["test"][:n],
        targets=None if d.recall_targets is None else d.recall_targets.first(n), reference=d.reference_features(), step=d.observable_step,
        teacher_forced=cfg.eval.cache == "truth",
    )



def log_eval(logger, res: EvalResult, step: int, prefix: str = "eval") -> None:
    """The summary scalars at the training step (per-frame curves: ``tensorboard_log.log_stage``)."""
    w = logger.experiment
    for k, v in res.summary().items():
        if "_se@" not in k and np.isfinite(v):
            w.add_scalar(f"{prefix}/{k}", v, step)
    w.flush()


class PeriodicEval(L.Callback):
    """Every ``every`` optimizer steps, the long-horizon evaluation of the current weights, logged."""

    def __init__(self, cfg, stage: Stage, d: RunData, every: int):
        self.cfg, self.stage, self.d, self.every = cfg, stage, d, every
        self.done = 0  # the last step evaluated: micro-batches of one accumulated step share its number

    def on_train_start(self, trainer, pl_module) -> None:
        self.done = trainer.global_step  # a resumed run evaluated its restored step before it stopped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.done or step % self.every or not trainer.is_global_zero:
            return
        self.done = step
        st = self.stage
        res = evaluate_model(self.cfg, pl_module.inference_model(), st.memory, st.selector, st.attention, self.d,
                             out_dir=None, desc=f"eval@{step}", train_frames=st.train.clip_frames)
        log_eval(trainer.logger, res, step, prefix="eval_periodic")
        pl_module.model.train()


def fit_stage(cfg, stage: Stage, d: RunData, run_dir: Path, init: Optional[Path], resume: bool) -> WorldModule:
    """Train one stage (or continue it from ``last.ckpt``); returns the trained module."""
    from lightning.pytorch.loggers import TensorBoardLogger

    stage_dir = run_dir / "stages" / stage.dirname
    stage_dir.mkdir(parents=True, exist_ok=True)
    module = make_module(cfg, stage, d)
    last = stage_dir / "checkpoints" / "last.ckpt"
    found = resumable_checkpoint(last.parent) if resume else None  # a damaged last.ckpt: best.ckpt, or over
    ckpt_path = str(found) if found else None
    if ckpt_path is None:
        module.trainer_plugin.check_start(init)
    if stage.train.strategy == "fsdp" and any(p.requires_grad for p in module.aux.parameters()):
        raise WorldkitError(
            f"stage {stage.name}: trainer {stage.trainer['type']} trains networks beside the model, which "
            "train.strategy=fsdp does not shard and clip correctly yet; use ddp (or "
            "ddp_find_unused_parameters_true)"
        )
    if ckpt_path is None and init is not None:
        load_weights(module.model, init)
        if module.ema_model is not None:
            module.ema_model.load_state_dict(module.model.state_dict())
    tr = stage.train
    frames = module.trainer_plugin.data_frames(tr.clip_frames)
    datamod = ResumableData(d.clips("train", frames), d.clips("val", frames), tr.batch_size,
                            tr.max_steps, tr.accumulate, cfg.seed + stage.index, workers=0)
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version=stage.dirname, default_hp_metric=False)
    saver = SaveOnInterrupt(last)
    callbacks = [saver] + ([PeriodicEval(cfg, stage, d, tr.eval_every)] if tr.eval_every else [])
    trainer = make_trainer(tr, stage_dir, callbacks, logger, val_batches=4)
    try:
        trainer.fit(module, datamodule=datamod, ckpt_path=ckpt_path)
    except SystemExit:
        # Lightning turns Ctrl-C into exit(1), and a SIGTERM it handled itself into SIGTERMException,
        # after our checkpoint
        if saver.interrupted:
            raise signals.interrupt(f"stopped; resume with: worldkit run --resume {run_dir}") from None
        raise
    finally:
        signals.release(raise_pending=False)  # a step cut short by an error leaves no hold behind
    module._logger_for_eval = logger
    module.train_device = trainer.strategy.root_device  # Lightning moves the module back to the CPU at teardown
    return module


def _untrained(cfg, stage: Stage, d: RunData, run_dir: Path, init: Optional[Path]):
    """A stage with ``train.max_steps: 0``: the weights it starts from, its TensorBoard logger, step 0."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if init is None:  # validation refuses this; a guard for configs built in code
        raise WorldkitError(f"stage {stage.name}: train.max_steps=0 evaluates the starting weights, but there are "
                            "none (set model.init)")
    (run_dir / "stages" / stage.dirname).mkdir(parents=True, exist_ok=True)
    model = make_module(cfg, stage, d).model
    load_weights(model, init)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version=stage.dirname, default_hp_metric=False)
    return model, logger, 0


def run(cfg, run_dir: os.PathLike, resume: bool = False) -> list[dict]:
    """Run every stage of ``cfg`` in ``run_dir``, evaluating after each; returns the summary rows.
    Ctrl-C anywhere (training, evaluation, the state probe) says how to resume."""
    try:
        return _run_stages(cfg, Path(run_dir), resume)
    except KeyboardInterrupt as stop:
        if str(stop):  # already says where it stopped
            raise
        raise signals.interrupt(f"stopped; finished stages are kept; resume with: worldkit run --resume {run_dir}") from None


def _run_stages(cfg, run_dir: Path, resume: bool) -> list[dict]:
    torch.manual_seed(cfg.seed)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
    d = RunData(cfg)
    init = resolve_init(cfg.model.init) if cfg.model.init else None
    rows = []
    branch = init  # what the last stage (and every comparison variant) starts from
    for stage in resolve_stages(cfg):
        if stage.variant:
            init = branch
        else:
            branch = init
        stage_dir = run_dir / "stages" / stage.dirname
        final = stage_dir / "model.pt"
        if resume and stage_finished(stage_dir):
            rows.append(json.loads((stage_dir / "summary.json").read_text()))
            init = final
            continue
        what = "evaluates its starting weights" if stage.train.max_steps == 0 else stage.trainer["type"]
        print(f"== stage {stage.dirname}: {what} with memory={stage.memory['type']} "
              f"selector={stage.selector['type']} attention={stage.attention['type']}", flush=True)
        if stage.train.max_steps == 0:  # no training: the stage scores the weights it starts from
            model, logger, step = _untrained(cfg, stage, d, run_dir, init)
            save_weights(model, final)
        else:
            module = fit_stage(cfg, stage, d, run_dir, init, resume)
            model = module.inference_model().to(module.train_device)
            if module.trainer.is_global_zero:
                save_weights(model, final)
            module.trainer.strategy.barrier("stage weights saved")
            if not module.trainer.is_global_zero:  # other DDP ranks: rank 0 evaluates
                init = final
                continue
            logger, step = module._logger_for_eval, module.global_step
        res = evaluate_model(cfg, model, stage.memory, stage.selector, stage.attention, d, stage_dir,
                             desc=f"eval {stage.name}", train_frames=stage.train.clip_frames)
        res.save(stage_dir / "eval.json")
        write_plugin_reports(stage, stage_dir)
        log_eval(logger, res, step)
        tensorboard_log.log_stage(logger, cfg, stage.index, res, stage_dir, step)
        row = {"stage": stage.dirname, "trainer": stage.trainer["type"], "memory": stage.memory["type"],
               "selector": stage.selector["type"], "attention": stage.attention["type"], **res.summary()}
        atomic_write(stage_dir / "summary.json", json.dumps(row))
        rows.append(row)
        init = final
    write_summary(resolve_stages(cfg), run_dir, cfg.name, cfg.eval.reference)
    return rows


def write_plugin_reports(stage: Stage, stage_dir: Path) -> None:
    """The files the stage's plugins report once it is evaluated (``Plugin.report``), in ``stage_dir``."""
    files = {}
    for kind in STAGE_KINDS:
        files.update(registry.get(kind, getattr(stage, kind)["type"]).report())
    for name, value in files.items():
        if Path(name).name != name:
            raise WorldkitError(f"a plugin of stage {stage.name} reports {name!r}: a file name is expected")
        atomic_write(stage_dir / name, json.dumps(value, indent=1))


def evaluate_weights(cfg, weights: str, run_dir: Path) -> list[dict]:
    """Score one set of weights as they are (no training) under every stage's and variant's plugins of
    ``cfg``: the same weights with different memory, the fairest comparison. Writes a stage folder per
    stage (eval.json, summary.json, strips) and the run's results; returns the summary rows."""
    d = RunData(cfg)
    # read-time settings the experiment chooses (e.g. block_patches) apply; the weights' own otherwise
    chosen = {k: getattr(cfg.model, k) for k in READ_TIME_SETTINGS & cfg.model.model_fields_set}
    model = load_model(weights, "model.init", **chosen)
    hp = model.hparams
    if hp.get("frame_size") != d.frame_size or hp.get("action_dim") != d.action_dim:
        raise WorldkitError(f"{weights}: a model of {hp.get('frame_size')}-pixel frames and {hp.get('action_dim')} "
                            f"action dims; the experiment's env {cfg.env.type} has {d.frame_size} and {d.action_dim}")
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")
    stages, rows = resolve_stages(cfg), []
    for stage in stages:
        stage_dir = run_dir / "stages" / stage.dirname
        stage_dir.mkdir(parents=True, exist_ok=True)
        res = evaluate_model(cfg, model, stage.memory, stage.selector, stage.attention, d, stage_dir,
                             desc=f"eval {stage.name}", train_frames=stage.train.clip_frames)
        res.save(stage_dir / "eval.json")
        row = {"stage": stage.dirname, "weights": str(weights), "memory": stage.memory["type"],
               "selector": stage.selector["type"], "attention": stage.attention["type"], **res.summary()}
        atomic_write(stage_dir / "summary.json", json.dumps(row))
        rows.append(row)
        print(f"== {stage.dirname}: evaluated", flush=True)
    write_summary(stages, run_dir, f"{cfg.name}: {weights} as it is", cfg.eval.reference,
                  kinds=MODEL_KINDS)
    return rows
