"""Self forcing: the model rolls itself out through the inference engine and is trained on what it made.

Two objectives, alone or together:

- **regression**: each generated chunk's clean estimate against the ground-truth frames of the world;
- **DMD** (distribution matching distillation, as in Self-Forcing): a frozen *teacher* (an earlier
  checkpoint) scores the generated clip as the real distribution, a trainable *fake-score critic*
  (initialised from the teacher) learns the generator's own distribution, and the generator moves along
  ``x0_real - x0_fake``. The critic is trained on every step, the generator on every
  ``critic_ratio``-th one.

Teacher and critic are full world models evaluated over the clip in parallel with the same actions and a
dense block-causal mask: the ground-truth context frames clean, the generated frames noised to one level
per sample, each generated chunk seeing either the clean generated frames before it (``history: clean``,
the conditional each rollout step samples from; the clip twice, as in teacher forcing) or the noised ones
(``history: noisy``: each chunk's score given the noised chunks before it, the closest a causal teacher
comes to Self-Forcing's scoring of whole videos). The scores always read the whole history with a dense
mask, whatever the memory policy of the rollout: the teacher stands for the real conditional, which a
memory policy only approximates.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from worldkit import diffusion
from worldkit.errors import WorldkitError
from worldkit.interfaces import PluginConfig, RolloutTrainer
from worldkit.model import ParallelContext, WorldModel
from worldkit_plugins.trainers.common import twin_context, twin_forward


class DMDConfig(PluginConfig):
    """Distribution matching against a frozen teacher with a learned fake-score critic."""

    teacher: Optional[str] = Field(
        None, description="teacher checkpoint (a path or a shipped name such as base/pendulum); "
                          "none: the weights the stage starts from")
    weight: float = Field(1.0, ge=0, description="weight of the DMD term in the generator's loss")
    critic_ratio: int = Field(5, ge=1, description="critic updates per generator update")
    critic_lr_scale: float = Field(1.0, gt=0, description="critic learning rate as a multiple of train.lr")
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
            from worldkit.experiment import load_weights, resolve_init

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
    """Runs a score network on a clip whose generated part (frames ``ctx:``) is noised to level ``t``."""

    def __init__(self, clip: Tensor, actions: Tensor, ctx: int, chunk: int, history: str):
        B, F = clip.shape[:2]
        self.clip, self.ctx, self.history = clip, ctx, history
        visible = dense_visibility(F, chunk)
        self.actions = actions
        if history == "clean":
            self.pctx = twin_context(visible, torch.arange(F, dtype=torch.float32).expand(F, F), chunk)
        else:
            self.pctx = ParallelContext(visible, torch.arange(F, dtype=torch.float32))

    def __call__(self, net: WorldModel, level: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """The network's output and its clean estimate on the generated frames, (B, F - ctx, 3, H, W) each.
        level: (B, 1); eps: like the clip."""
        B, F = self.clip.shape[:2]
        t = torch.cat([torch.zeros(B, self.ctx, device=level.device), level.expand(B, F - self.ctx)], dim=1)
        x_t = diffusion.add_noise(self.clip, eps, t)
        if self.history == "clean":
            out = twin_forward(net, self.clip, x_t, t, self.actions, self.pctx)
        else:
            out = net(x_t, t, self.actions, self.pctx)
        gen = slice(self.ctx, None)
        return out[:, gen], diffusion.to_x0(out[:, gen], x_t[:, gen], t[:, gen], net.prediction)


def dmd_loss(gen: Tensor, real: Tensor, fake: Tensor) -> Tensor:
    """The DMD generator loss: its gradient with respect to ``gen`` is ``(fake - real) / w`` per element
    (over the element count), ``w`` the mean distance of ``gen`` from the teacher's estimate per sample."""
    g = gen.detach().float()
    w = (g - real.float()).abs().mean(dim=tuple(range(1, g.ndim)), keepdim=True).clamp_min(1e-6)
    step = (fake.float() - real.float()) / w
    return 0.5 * (gen.float() - (g - step)).pow(2).mean()


class SelfForcing(RolloutTrainer):
    """Self rollout through the inference engine; gradient only at a random exit step per chunk.

    Chunk by chunk with the same cache, memory policy, selector and attention backend as inference; the
    loss compares each chunk's clean estimate at its exit step with the ground-truth frames
    (``regression_weight``) and, with ``dmd``, scores the generated clip against a frozen teacher."""

    class Config(PluginConfig):
        context_frames: int = Field(2, ge=1, description="ground-truth frames committed before the rollout")
        exit: Literal["random", "last"] = Field(
            "random", description="the denoising step that carries the gradient, per chunk: a random one (every "
                                  "step learns; Self-Forcing) or the last (the rollout is exactly the inference one)")
        regression_weight: float = Field(1.0, ge=0, description="weight of the loss against the ground-truth frames")
        dmd: Optional[DMDConfig] = Field(None, description="distribution matching against a frozen teacher (off when absent)")

    @classmethod
    def check(cls, config, experiment):
        chunk, clip = experiment.model.chunk_frames, experiment.train.clip_frames
        problems = []
        if config.context_frames % chunk or config.context_frames >= clip:
            problems.append(("context_frames", config.context_frames,
                             f"must be a multiple of model.chunk_frames={chunk} below train.clip_frames={clip}"))
        if config.dmd is None and config.regression_weight == 0:
            problems.append(("regression_weight", 0.0, "is the only loss when dmd is off: make it positive, or set dmd"))
        if config.dmd is not None and experiment.train.strategy == "fsdp":
            problems.append(("dmd", config.dmd.model_dump(), "trains a critic beside the model, which train.strategy=fsdp "
                                                             "does not shard and clip correctly yet; use ddp (or "
                                                             "ddp_find_unused_parameters_true)"))
        return problems

    @classmethod
    def checkpoints(cls, config) -> dict:
        return {"dmd.teacher": config.dmd.teacher} if config.dmd is not None and config.dmd.teacher else {}

    def check_start(self, init) -> None:
        if self.config.dmd is not None and self.config.dmd.teacher is None and init is None:
            raise WorldkitError(
                "trainer.dmd.teacher is not set and the stage starts from random weights, so the teacher would "
                "be random: set trainer.dmd.teacher to a checkpoint (or a shipped name such as base/pendulum), "
                "set model.init, or put a pretraining stage first"
            )

    def attach(self, module) -> None:
        if self.config.dmd is not None:
            module.aux["dmd"] = DMDNets(module.model, self.config.dmd.critic_lr_scale)

    def rollout(self, module, x: Tensor, a: Tensor, g: torch.Generator, grad: bool) -> tuple[Tensor, list[int]]:
        """The generated frames after the context, (B, F - ctx, 3, H, W), and the exit step per chunk."""
        B, F = x.shape[:2]
        fc = module.model.chunk_frames
        ctx = self.config.context_frames
        if ctx % fc or ctx >= F:
            raise ValueError(f"trainer.context_frames={ctx} must be a multiple of the chunk ({fc}) below the clip ({F})")
        rollout = module.rollout
        chunks, exits = [], []
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            rollout.reset(B, device=x.device)
            rollout.commit_frames(x[:, :ctx], a[:, :ctx])
            for s in range(ctx, F, fc):
                exit_step = int(torch.randint(rollout.steps, (1,), generator=g))  # drawn either way: same noise
                if self.config.exit == "last":
                    exit_step = rollout.steps - 1
                chunks.append(rollout.chunk(a[:, s : s + fc], exit_step=exit_step, generator=g))
                exits.append(exit_step)
        return torch.cat(chunks, dim=1), exits

    def loss(self, module, batch):
        x, a = batch["frames"], batch["actions"]  # (B, F, 3, H, W), (B, F, A)
        cfg, ctx = self.config, self.config.context_frames
        g = module.generator()
        dmd = cfg.dmd if module.training else None  # validation: the loss against the ground truth alone
        gen_step = dmd is None or module.global_step % dmd.critic_ratio == 0
        gen, exits = self.rollout(module, x, a, g, grad=gen_step)
        regression = (gen.float() - x[:, ctx:].float()).pow(2).mean()
        logs = {"mean_exit_step": float(sum(exits)) / len(exits)}
        if dmd is None:  # validation reports the plain error against the ground truth
            return (cfg.regression_weight * regression if module.training else regression), logs
        nets: DMDNets = module.aux["dmd"]
        if not bool(nets.ready):
            nets.initialise(module.model, dmd.teacher)
        B, F = x.shape[:2]
        clip = torch.cat([x[:, :ctx], gen.detach()], dim=1)
        score = Scorer(clip, a, ctx, module.model.chunk_frames, dmd.history)

        def noise(salt: int) -> tuple[Tensor, Tensor]:
            gs = module.generator(salt)
            return dmd.min_level + (dmd.max_level - dmd.min_level) * module.rand((B, 1), gs), module.randn(clip.shape, gs)

        # the critic learns the generator's distribution: denoising loss on the generated frames
        level, eps = noise(1)
        pred, _ = score(nets.critic, level, eps)
        target = diffusion.target(clip, eps, nets.critic.prediction)[:, ctx:]
        critic = (pred.float() - target.float()).pow(2).mean()
        logs["critic_loss"] = critic.detach()
        logs["regression_loss"] = regression.detach()
        if not gen_step:
            return critic, logs
        level, eps = noise(2)
        with torch.no_grad():
            real = score(nets.teacher, level, eps)[1]
            fake = score(nets.critic, level, eps)[1]
        distill = dmd_loss(gen, real, fake)
        logs["dmd_loss"] = distill.detach()
        return cfg.regression_weight * regression + dmd.weight * distill + critic, logs
