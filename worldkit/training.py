"""Lightning glue: a LightningModule that holds the world model and its plugins and delegates the loss
to a trainer plugin; a resumable sampler; the ``lightning.Trainer`` built from ``TrainConfig``.

Everything random in a training step is drawn from the trainer plugin's ``TrainContext.generator``,
seeded by (seed, global step, salt, training, micro-batch), and the data order depends only on (seed,
sample position), so a run resumed from a checkpoint sees the same batches and noise as an
uninterrupted one.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from worldkit import registry, signals
from worldkit.errors import WorldkitError
from worldkit.model import WorldModel
from worldkit.rollout import Rollout
from worldkit.schema import TrainConfig
from worldkit.train_context import TrainContext


class StepSampler(Sampler[int]):
    """An endless, resumable stream of item indices: global position p draws item ``perm_e[p % size]``
    of the permutation of epoch ``e = p // size`` seeded by ``seed + e``. Under data parallelism each
    global batch is ``world`` consecutive runs of ``batch`` positions, run r going to rank r; this
    sampler yields rank ``rank``'s share, ``length`` items. ``start`` skips the items this rank has
    already consumed (set from the restored global step on resume)."""

    def __init__(self, size: int, seed: int, length: int, rank: int = 0, world: int = 1, batch: int = 1):
        self.size, self.seed, self.length = size, seed, length
        self.rank, self.world, self.batch = rank, world, batch
        self.start = 0

    def position(self, j: int) -> int:
        """Global stream position of this rank's j-th item."""
        return ((j // self.batch) * self.world + self.rank) * self.batch + j % self.batch

    def __iter__(self) -> Iterator[int]:
        epoch, perm = -1, []
        for j in range(self.start, self.length):
            p = self.position(j)
            if p // self.size != epoch:
                epoch = p // self.size
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            yield perm[p % self.size]

    def __len__(self) -> int:
        # the whole run, not what is left: Lightning restores the batches already done and counts on
        return self.length


class NonFiniteLoss(WorldkitError):
    """The loss became NaN or infinite."""


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at optimizer step ``step`` (1-based), warmed up as min(decay, (1 + step) / (10 + step)):
    without the warm-up a decay of 0.999 still holds 0.999^1500 = 22 % of the starting weights after 1,500
    steps (a run stopped early by its time limit then saves mostly noise)."""
    return min(decay, (1 + step) / (10 + step))


class WorldModule(L.LightningModule):
    """The world model, its memory / selector / attention plugins and a trainer plugin for the loss.

    Built from plain dicts (saved as hyperparameters) so a checkpoint is self-describing. The trainer
    plugin sees ``context`` (a ``TrainContext``), not this module."""

    def __init__(
        self,
        model: dict,
        trainer: dict,
        memory: dict,
        selector: dict,
        attention: dict,
        train: dict,
        sampler: dict,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed alone
            torch.manual_seed(seed)
            self.model = WorldModel(**model)
        self.trainer_plugin = registry.build("trainer", trainer)
        self.memory = registry.build("memory", memory)
        self.selector = registry.build("selector", selector)
        self.backend = registry.build("attention", attention)
        self.train_config = TrainConfig.model_validate(train)
        self.seed = seed
        self.rollout = Rollout(
            self.model, self.memory, self.selector, self.backend,
            steps=sampler["steps"], shift=sampler["shift"], train_frames=self.train_config.clip_frames,
        )
        self.ema_model: Optional[WorldModel] = None
        if self.train_config.ema:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.aux = torch.nn.ModuleDict()  # networks the trainer plugin trains or reads beside the model
        self._micro, self._ema_step = 0, 0
        self.context = TrainContext(self.model, self.memory, self.selector, self.backend, self.rollout,
                                    self.train_config, seed, aux=self.aux, clock=self)
        self.trainer_plugin.attach(self.context)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The trainer plugin's loss on ``batch`` (the validation loss when not ``training``)."""
        return self.trainer_plugin.loss(self.context, batch)

    # ---- Lightning hooks ----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._micro = batch_idx % self.train_config.accumulate  # position in the accumulated step
        try:
            loss, logs = self.loss(batch)
        finally:
            self._micro = 0
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the loss is {loss.item()} at step {self.global_step}; the last good checkpoint is kept in "
                "the stage's checkpoints/ folder (try a lower train.lr or train.grad_clip)"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["frames"].shape[0])
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=batch["frames"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self.loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["frames"].shape[0], sync_dist=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        # from here to the end of on_train_batch_end the step is applied (weights, schedule, EMA): a
        # stop signal waits until it is whole, so the interrupt checkpoint is a completed step
        signals.hold()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # EMA once per optimizer step, and only when the model was updated (not on a DMD critic-only step)
        stepped, self._ema_step = self.global_step != self._ema_step, self.global_step
        updated = any(p.grad is not None for p in self.model.parameters())
        if self.ema_model is not None and stepped and updated:
            d = ema_decay(self.train_config.ema, self.global_step)
            with torch.no_grad():
                for pe, p in zip(self.ema_model.parameters(), self.model.parameters()):
                    pe.lerp_(p, 1 - d)
        signals.release()  # the last hook of the step: a stop signal that arrived during it is raised here

    def _networks(self) -> list[tuple[torch.nn.Module, float]]:
        """The trained networks with their learning-rate multiples: the model, then the trainer's own."""
        nets = [(self.model, 1.0)]
        for net in self.aux.values():
            if any(p.requires_grad for p in net.parameters()):
                nets.append((net, float(getattr(net, "lr_scale", 1.0))))
        return nets

    def configure_optimizers(self):
        cfg = self.train_config
        groups = []
        for net, scale in self._networks():
            decay = [p for p in net.parameters() if p.requires_grad and p.ndim >= 2]
            other = [p for p in net.parameters() if p.requires_grad and p.ndim < 2]
            groups += [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr * scale},
                       {"params": other, "weight_decay": 0.0, "lr": cfg.lr * scale}]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
        warm, total, cosine = cfg.warmup_steps, cfg.max_steps, cfg.schedule == "cosine"

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if not cosine:
                return 1.0
            p = min(1.0, (step - warm) / max(1, total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip each trained network on its own, so a critic's large gradients do not shrink the model's."""
        if gradient_clip_val is None or len(self._networks()) == 1:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for net, _ in self._networks():
            params = [p for p in net.parameters() if p.grad is not None]
            if not params:
                continue
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def inference_model(self) -> WorldModel:
        """The weights to evaluate with: the EMA copy when there is one."""
        return self.ema_model if self.ema_model is not None else self.model


class ResumableData(L.LightningDataModule):
    """Training clips through a ``StepSampler`` (resumable order), validation clips in a fixed order."""

    def __init__(self, train_set, val_set, batch_size: int, max_steps: int, accumulate: int, seed: int, workers: int = 0):
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.seed, self.workers = batch_size, seed, workers
        self.sampler = StepSampler(len(train_set), seed, max_steps * accumulate * batch_size, batch=batch_size)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is not None:  # this rank's share; resumed: skip what the restored steps consumed
            self.sampler.rank, self.sampler.world = trainer.global_rank, trainer.world_size
            self.sampler.start = trainer.global_step * trainer.accumulate_grad_batches * self.batch_size
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.sampler,
                          num_workers=self.workers, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.workers)


class SaveOnInterrupt(L.Callback):
    """Ctrl-C or SIGTERM: save ``last.ckpt`` so the run can be resumed. (Without ``worldkit.signals``'
    handlers, Lightning answers SIGTERM by stopping at the end of the step with ``SIGTERMException``;
    that is saved too.)"""

    def __init__(self, path: Path):
        self.path = path
        self.interrupted = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            self.interrupted = True
            with signals.deferred():  # a second signal does not cut the checkpoint short
                trainer.save_checkpoint(self.path, weights_only=False)  # (said, so Lightning does not say it)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """An interrupt checkpoint restarts at the last optimizer step: its batch counters go back to that
        step's end, where the data order resumes, so a half-accumulated step is redone whole."""
        if not self.interrupted:
            return
        loops = checkpoint["loops"]["fit_loop"]
        progress = loops["epoch_loop.batch_progress"]
        done = trainer.global_step * trainer.accumulate_grad_batches  # micro-batches of the completed steps
        extra = progress["current"]["ready"] - done  # counted by Lightning beyond the last step's end
        if progress["total"]["ready"] - extra <= 0:  # no step completed: the run restarts from the beginning
            del checkpoint["loops"]
            return
        for part in ("total", "current"):
            n = max(0, progress[part]["ready"] - extra)
            # the state of a save at the end of the step's last batch (Lightning then counts it completed)
            progress[part].update(ready=n, started=n, processed=n, completed=max(0, n - 1))
        if extra > 0:  # and counts one more stepped batch on that restart, which the logged steps follow
            loops["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1


def make_trainer(train: Any, stage_dir: Path, callbacks: list, logger, val_batches: Optional[int] = None) -> L.Trainer:
    """A ``lightning.Trainer`` from a ``TrainConfig``; checkpoints (last + best by val/loss) in stage_dir."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints", filename="best", monitor="val/loss", mode="min",
        save_last=True, save_top_k=1, every_n_train_steps=min(train.val_every, train.max_steps),
        enable_version_counter=False,  # a resumed run overwrites last.ckpt (also written on Ctrl-C)
    )
    return L.Trainer(
        max_steps=train.max_steps,
        max_time=None if train.max_minutes is None else {"seconds": int(60 * train.max_minutes)},
        precision=train.precision,
        gradient_clip_val=train.grad_clip,
        accumulate_grad_batches=train.accumulate,
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,  # ddp on CPU runs over gloo
        num_nodes=train.num_nodes,
        val_check_interval=min(train.val_every, train.max_steps) * train.accumulate,  # counts micro-batches
        check_val_every_n_epoch=None,
        limit_val_batches=val_batches,
        log_every_n_steps=train.log_every,
        callbacks=[ckpt, *callbacks],
        use_distributed_sampler=False,  # the StepSampler shards the stream itself, resumably
        logger=logger,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )
