"""Self forcing: the model rolls itself out through the inference engine and is trained on what it made.

The rollout runs chunk by chunk with the same cache, memory policy, selector and attention backend as
inference (train = test cache), from ``context_frames`` true frames; each chunk's own sample is committed
to the cache. What the model is trained on, alone or together:

- **denoise** (``objective: denoise``, the default): at each chunk the *true* next chunk is noised to the
  level of a denoising step (the exit step) and the model, reading the cache of its own rollout, is trained
  on the ordinary denoising target. Its optimum is the denoiser of the true conditional given the model's
  own history (DIAMOND / GameNGen train on noised context; here the context is the rollout itself), not
  the mean of its samples: the pull to the mean frame of the regression below does not arise.
  ``context_noise`` commits the own samples with that much noise (and tells the model the level).
  ``commit: truth`` commits the true chunks instead (teacher forcing through the inference engine's memory
  policy, selector and backend; no sampling): the target is then consistent with the context, which it is
  not once the model's own rollout has drifted from the true episode (measured: training on true targets
  after drifted own context teaches the model to disregard its context).
- **regression** (``objective: regression``): each generated chunk's clean estimate at the exit step
  against the true frames. Its optimum is the mean over the model's own uncertainty, which grows along
  the rollout: rollouts blur towards the mean frame. Kept for comparison.
- **DMD** (distribution matching distillation, as in Self-Forcing): a frozen *teacher* scores the
  generated clip as the real distribution, a trainable *fake-score critic* (initialised from the
  teacher) learns the generator's own distribution, and the generator moves along ``x0_real - x0_fake``.
  The critic is trained on every step, the generator on every ``critic_ratio``-th one. With DMD the
  ground-truth term is off unless ``regression_weight`` is set.

``segments`` > 1 streams past the training clip (LongLive's streaming long tuning): the clip the trainer
reads is ``segments x train.clip_frames`` frames, the rollout runs through all of it with the cache
carried across the segment boundaries (the memory policy sees gaps longer than its window), and every
chunk of every segment is trained. Commits are never differentiable, so no gradient crosses a chunk.

Teacher and critic are full world models evaluated over the clip in parallel with the same actions and a
dense block-causal mask: the ground-truth context frames clean, the generated frames noised to one level
per sample, each generated chunk seeing either the clean generated frames before it (``history: clean``,
the conditional each rollout step samples from; the clip twice, as in teacher forcing) or the noised ones
(``history: noisy``: each chunk's score given the noised chunks before it, the closest a causal teacher
comes to Self-Forcing's scoring of whole videos). The scores always read the whole history with a dense
mask, whatever the memory policy of the rollout: the teacher stands for the real conditional, which a
memory policy only approximates. ``guidance`` > 1 extrapolates the teacher's score along the actions
(classifier-free guidance against zeroed actions). For a teacher trained with ``action_dropout`` a zeroed
clip means "actions unknown"; where a zero action is itself an action (the revisit room's "no turn"), the
guidance of a teacher trained without dropout amplifies what the actions change against standing still.
Measured on the revisit room (benchmarks/RESULTS.md, "Guided DMD"): 1.5 with the base as the teacher
removes the frozen objects that unguided DMD leaves in view, at the price of exaggerated motion; 3
collapses.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from worldkit import diffusion
from worldkit.errors import WorldkitError
from worldkit.interfaces import PluginConfig, RolloutTrainer
from worldkit.train_context import TrainContext
from worldkit.model import ParallelContext, WorldModel
from worldkit_plugins.trainers.common import denoising_loss, twin_context, twin_forward


class DMDConfig(PluginConfig):
    """Distribution matching against a frozen teacher with a learned fake-score critic."""

    teacher: Optional[str] = Field(
        None, description="teacher checkpoint (a path or a shipped name such as base/pendulum); "
                          "none: the weights the stage starts from")
    weight: float = Field(1.0, ge=0, description="weight of the DMD term in the generator's loss")
    critic_ratio: int = Field(5, ge=1, description="critic updates per generator update")
    critic_lr_scale: float = Field(0.2, gt=0, description="critic learning rate as a multiple of train.lr "
                                                           "(Self-Forcing: 4e-7 against the generator's 2e-6)")
    guidance: float = Field(1.0, ge=1, description="classifier-free guidance of the teacher's score along the actions "
                                                   "(against zeroed actions); 1: none; 1.5 measured best on the "
                                                   "revisit room, 3 collapses there")
    history: Literal["clean", "noisy"] = Field(
        "clean", description="what a noised generated chunk sees when scored: the clean generated frames before "
                             "it (the conditional the rollout samples from) or the whole clip noised alike")
    min_level: float = Field(0.02, ge=0, lt=1, description="lowest noise level at which the scores are compared")
    max_level: float = Field(0.98, gt=0, le=1, description="highest noise level at which the scores are compared")

    @model_validator(mode="after")
    def _levels(self) -> "DMDConfig":
        if self.min_level >= self.max_level:
            raise ValueError(f"min_level ({self.min_level}) must be below max_level ({self.max_level})")
        return self


class DMDNets(nn.Module):
    """The frozen teacher and the trainable critic. ``ready`` (saved in checkpoints) records that both
    were initialised, so a resumed run keeps the critic it trained."""

    def __init__(self, model: WorldModel, lr_scale: float):
        super().__init__()
        self.teacher = WorldModel(**model.hparams).requires_grad_(False)
        self.critic = WorldModel(**model.hparams)
        self.lr_scale = lr_scale
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def initialise(self, generator: WorldModel, teacher: Optional[str]) -> None:
        if teacher is None:
            self.teacher.load_state_dict(generator.state_dict())
        else:
            from worldkit.checkpoints import load_weights, resolve_init

            load_weights(self.teacher, resolve_init(teacher, "trainer.dmd.teacher"), "trainer.dmd.teacher")
        self.critic.load_state_dict(self.teacher.state_dict())
        self.ready.fill_(True)

    def train(self, mode: bool = True) -> "DMDNets":
        super().train(mode)
        self.teacher.eval()
        return self


def dense_visibility(frames: int, chunk: int) -> Tensor:
    """Block-causal visibility over a clip (F, F): a frame sees every frame of its own and earlier chunks."""
    c = torch.arange(frames) // chunk
    return c[None, :] <= c[:, None]


class Scorer:
    """Runs a score network on a clip whose generated part (frames ``n_ctx:``) is noised to level ``t``."""

    def __init__(self, clip: Tensor, actions: Tensor, n_ctx: int, chunk: int, history: str):
        B, F = clip.shape[:2]
        self.clip, self.n_ctx, self.history = clip, n_ctx, history
        visible = dense_visibility(F, chunk)
        self.actions = actions
        if history == "clean":
            self.pctx = twin_context(visible, torch.arange(F, dtype=torch.float32).expand(F, F), chunk)
        else:
            self.pctx = ParallelContext(visible, torch.arange(F, dtype=torch.float32))

    def __call__(self, net: WorldModel, level: Tensor, eps: Tensor, guidance: float = 1.0) -> tuple[Tensor, Tensor]:
        """The network's output and its clean estimate on the generated frames, (B, F - n_ctx, 3, H, W) each.
        level: (B, 1); eps: like the clip; ``guidance`` > 1: ``uncond + guidance * (cond - uncond)`` with
        the unconditional output read under zeroed actions."""
        B, F = self.clip.shape[:2]
        t = torch.cat([torch.zeros(B, self.n_ctx, device=level.device), level.expand(B, F - self.n_ctx)], dim=1)
        x_t = diffusion.add_noise(self.clip, eps, t)

        def run(actions: Tensor) -> Tensor:
            if self.history == "clean":
                return twin_forward(net, self.clip, x_t, t, actions, self.pctx)
            return net(x_t, t, actions, self.pctx)

        out = run(self.actions)
        if guidance != 1.0:
            uncond = run(torch.zeros_like(self.actions))
            out = uncond + guidance * (out - uncond)
        gen = slice(self.n_ctx, None)
        return out[:, gen], diffusion.to_x0(out[:, gen], x_t[:, gen], t[:, gen], net.prediction)


def dmd_loss(gen: Tensor, real: Tensor, fake: Tensor) -> Tensor:
    """The DMD generator loss: its gradient with respect to ``gen`` is ``(fake - real) / w`` per element
    (over the element count), ``w`` the mean distance of ``gen`` from the teacher's estimate per sample."""
    g = gen.detach().float()
    w = (g - real.float()).abs().mean(dim=tuple(range(1, g.ndim)), keepdim=True).clamp_min(1e-6)
    step = (fake.float() - real.float()) / w
    return 0.5 * (gen.float() - (g - step)).pow(2).mean()


class SelfForcing(RolloutTrainer):
    """Self rollout through the inference engine; gradient only at one denoising pass per chunk.

    Chunk by chunk with the same cache, memory policy, selector and attention backend as inference; the
    ground-truth term (``objective``, weighted by ``regression_weight``) and, with ``dmd``, the score of
    the generated clip against a frozen teacher."""

    class Config(PluginConfig):
        context_frames: int = Field(2, ge=1, description="ground-truth frames committed before the rollout")
        objective: Literal["denoise", "regression"] = Field(
            "denoise", description="the ground-truth term: denoise (the true next chunk noised to the exit step's "
                                   "level, read against the rollout's cache; optimum: the true conditional) or "
                                   "regression (the generated chunk against the true one; "
                                   "optimum: the mean, rollouts blur)")
        exit: Literal["random", "last"] = Field(
            "random", description="the denoising step that carries the gradient, per chunk: a random one (every "
                                  "step learns; Self-Forcing) or the last (the rollout is exactly the inference one)")
        regression_weight: Optional[float] = Field(
            None, ge=0, description="weight of the ground-truth term (the objective); default 1, or 0 with dmd "
                                    "(Self-Forcing's DMD has no such term)")
        context_noise: float = Field(0.0, ge=0, lt=1, description="noise level of the chunks committed during "
                                                                    "training (the model is told the level)")
        commit: Literal["own", "truth"] = Field(
            "own", description="what the cache takes after each chunk: the model's own sample (self forcing) or the "
                               "true chunk (teacher forcing through the inference engine's memory, selector and "
                               "backend; with context_noise, DIAMOND's noise-augmented context)")
        segments: int = Field(1, ge=1, description="training clips of segments x train.clip_frames frames, rolled "
                                                   "out with the cache carried past the clip (streaming long tuning)")
        dmd: Optional[DMDConfig] = Field(None, description="distribution matching against a frozen teacher (off when absent)")

        @property
        def truth_weight(self) -> float:
            if self.regression_weight is not None:
                return self.regression_weight
            return 0.0 if self.dmd is not None else 1.0

    @classmethod
    def check(cls, config, experiment):
        chunk, clip = experiment.model.chunk_frames, experiment.train.clip_frames
        problems = []
        if config.context_frames % chunk or config.context_frames >= clip:
            problems.append(("context_frames", config.context_frames,
                             f"must be a multiple of model.chunk_frames={chunk} below train.clip_frames={clip}"))
        if config.dmd is None and config.truth_weight == 0:
            problems.append(("regression_weight", 0.0, "is the only loss when dmd is off: make it positive, or set dmd"))
        if config.segments * clip > experiment.data.episode_frames:
            problems.append(("segments", config.segments,
                             f"needs clips of segments x train.clip_frames = {config.segments * clip} frames, longer "
                             f"than data.episode_frames={experiment.data.episode_frames}"))
        if config.dmd is not None and experiment.train.strategy == "fsdp":
            problems.append(("dmd", config.dmd.model_dump(), "trains a critic beside the model, which train.strategy=fsdp "
                                                             "does not shard and clip correctly yet; use ddp (or "
                                                             "ddp_find_unused_parameters_true)"))
        return problems

    @classmethod
    def checkpoints(cls, config) -> dict:
        return {"dmd.teacher": config.dmd.teacher} if config.dmd is not None and config.dmd.teacher else {}

    def data_frames(self, clip_frames: int) -> int:
        return self.config.segments * clip_frames

    def check_start(self, init) -> None:
        if self.config.dmd is not None and self.config.dmd.teacher is None and init is None:
            raise WorldkitError(
                "trainer.dmd.teacher is not set and the stage starts from random weights, so the teacher would "
                "be random: set trainer.dmd.teacher to a checkpoint (or a shipped name such as base/pendulum), "
                "set model.init, or put a pretraining stage first"
            )

    def attach(self, ctx: TrainContext) -> None:
        if self.config.dmd is not None:
            ctx.aux["dmd"] = DMDNets(ctx.model, self.config.dmd.critic_lr_scale)

    def rollout(self, ctx: TrainContext, x: Tensor, a: Tensor, g: torch.Generator, grad: bool, at_exit: bool = True,
                denoise: bool = False) -> tuple[Tensor, list[int], list[Tensor]]:
        """The model's own rollout after the context through the inference engine.

        Returns the generated frames (B, F - n_ctx, 3, H, W) (``at_exit``: the clean estimate at each chunk's
        exit step, differentiable there with ``grad``; otherwise the inference samples), the exit step per
        chunk, and with ``denoise`` the denoising loss of each chunk's true frames read against the cache."""
        B, F = x.shape[:2]
        fc = ctx.model.chunk_frames
        cfg, n_ctx = self.config, self.config.context_frames
        if n_ctx % fc or n_ctx >= F:
            raise ValueError(f"trainer.context_frames={n_ctx} must be a multiple of the chunk ({fc}) below the clip ({F})")
        rollout = ctx.rollout
        levels = rollout.levels()
        gn = ctx.generator(3)  # the denoising and context noise: the rollout's own draws stay as they were
        chunks, exits, terms = [], [], []
        # Rollout.chunk (sample, then commit) does not fit here: the true chunk is read against the cache
        # between the two, a step that commits the truth samples nothing, and the commit may carry noise.
        rollout.reset(B, device=x.device)
        with torch.no_grad():
            rollout.commit_frames(x[:, :n_ctx], a[:, :n_ctx])
        for s in range(n_ctx, F, fc):
            exit_step = int(torch.randint(rollout.steps, (1,), generator=g))  # drawn either way: same noise
            if cfg.exit == "last":
                exit_step = rollout.steps - 1
            acts = a[:, s : s + fc]
            true = x[:, s : s + fc]
            own = None
            if at_exit or cfg.commit == "own":  # a denoise-only step that commits the truth samples nothing
                with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                    own = rollout.sample(acts, exit_step=exit_step if at_exit else None, generator=g)
            if denoise:
                t = levels[exit_step].to(true.device, true.dtype).expand(B, fc)
                eps = ctx.randn(true.shape, gn).to(true.dtype)
                pred = rollout.read(diffusion.add_noise(true, eps, t), t, acts)
                terms.append(denoising_loss(ctx, pred, true, eps))
            kept = (true if cfg.commit == "truth" else own).detach()
            if cfg.context_noise > 0 and ctx.training:
                level = torch.full((B, fc), cfg.context_noise, device=kept.device, dtype=kept.dtype)
                rollout.commit(diffusion.add_noise(kept, ctx.randn(kept.shape, gn).to(kept.dtype), level),
                               acts, level=cfg.context_noise)
            else:
                rollout.commit(kept, acts)
            if own is not None:
                chunks.append(own)
            exits.append(exit_step)
        return (torch.cat(chunks, dim=1) if chunks else None), exits, terms

    def loss(self, ctx: TrainContext, batch: dict):
        x, a = batch["frames"], batch["actions"]  # (B, F, 3, H, W), (B, F, A)
        cfg, n_ctx = self.config, self.config.context_frames
        g = ctx.generator()
        dmd = cfg.dmd if ctx.training else None  # validation: the ground-truth term alone
        gen_step = dmd is None or ctx.step % dmd.critic_ratio == 0
        denoise = cfg.objective == "denoise" and (cfg.truth_weight > 0 or not ctx.training)
        at_exit = dmd is not None or cfg.objective == "regression"  # the generated clip is trained on
        with torch.set_grad_enabled(torch.is_grad_enabled() and gen_step):  # a critic-only step trains no generator
            gen, exits, terms = self.rollout(ctx, x, a, g, grad=at_exit, at_exit=at_exit, denoise=denoise)
        logs = {"mean_exit_step": float(sum(exits)) / len(exits)}
        if gen is not None:
            logs["rollout_mse"] = (gen.detach().float() - x[:, n_ctx:].float()).pow(2).mean()
        if cfg.objective == "denoise":
            truth = torch.stack(terms).mean() if terms else x.new_zeros(()).float()
        else:
            truth = (gen.float() - x[:, n_ctx:].float()).pow(2).mean()
        if dmd is None:  # validation reports the ground-truth term unweighted
            return (cfg.truth_weight * truth if ctx.training else truth), logs
        nets: DMDNets = ctx.aux["dmd"]
        if not bool(nets.ready):
            nets.initialise(ctx.model, dmd.teacher)
        B, F = x.shape[:2]
        clip = torch.cat([x[:, :n_ctx], gen.detach()], dim=1)
        score = Scorer(clip, a, n_ctx, ctx.model.chunk_frames, dmd.history)

        def noise(salt: int) -> tuple[Tensor, Tensor]:
            gs = ctx.generator(salt)
            return dmd.min_level + (dmd.max_level - dmd.min_level) * ctx.rand((B, 1), gs), ctx.randn(clip.shape, gs)

        # the critic learns the generator's distribution: denoising loss on the generated frames
        level, eps = noise(1)
        pred, _ = score(nets.critic, level, eps)
        target = diffusion.target(clip, eps, nets.critic.prediction)[:, n_ctx:]
        critic = (pred.float() - target.float()).pow(2).mean()
        logs["critic_loss"] = critic.detach()
        logs["truth_loss"] = truth.detach()
        if not gen_step:
            return critic, logs
        level, eps = noise(2)
        with torch.no_grad():
            real = score(nets.teacher, level, eps, guidance=dmd.guidance)[1]
            fake = score(nets.critic, level, eps)[1]
        distill = dmd_loss(gen, real, fake)
        logs["dmd_loss"] = distill.detach()
        return cfg.truth_weight * truth + dmd.weight * distill + critic, logs
