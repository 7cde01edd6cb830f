"""Trainers on Lightning: losses fall, self forcing trains through the inference path, resume is exact,
stages chain, DDP runs."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from worldkit import config as wk_config
from worldkit import experiment
from worldkit.training import ema_decay
from worldkit.experiment import RunData, fit_stage, make_module, resolve_stages


def tiny_raw(tmp_cache, **train):
    return {
        "name": "tiny",
        "seed": 0,
        "env": {"type": "pendulum", "size": 16},
        "data": {"train_episodes": 8, "val_episodes": 2, "test_episodes": 2, "episode_frames": 16,
                 "cache_dir": str(tmp_cache), "workers": 1},
        "model": {"patch": 4, "width": 32, "layers": 2, "heads": 2, "block_patches": 2, "chunk_frames": 2,
                  "sampler_steps": 2},
        "train": {"max_steps": 8, "batch_size": 4, "clip_frames": 6, "warmup_steps": 2, "val_every": 4,
                  "log_every": 1, "lr": 2e-3, **train},
        "eval": {"horizons": [1, 2], "episodes": 2, "context_frames": 2, "probe_steps": 30},
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run_data(cache):
    return RunData(wk_config.validate(tiny_raw(cache)))


def val_loss(module, batch):
    module.eval()
    with torch.no_grad():
        return module.loss(batch)[0].item()


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["diffusion_forcing", "teacher_forcing", "self_forcing"])
def test_validation_loss_falls(trainer, cache, run_data, tmp_path):
    cfg = wk_config.validate({**tiny_raw(cache, max_steps=100, val_every=100, batch_size=8), "trainer": {"type": trainer}})
    stage = resolve_stages(cfg)[0]
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("val", 6), batch_size=4)))
    before = val_loss(make_module(cfg, stage, run_data), batch)
    module = fit_stage(cfg, stage, run_data, tmp_path, init=None, resume=False)
    after = val_loss(module, batch)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("objective", ["regression", "denoise"])
def test_self_forcing_gradient_flows_only_through_exit_steps(objective, cache, run_data):
    cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "self_forcing", "objective": objective}})
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    acts = []

    def keep(mod, inp, out):
        out.retain_grad() if out.requires_grad else None
        acts.append(out)

    h = module.model.blocks[0].attn.register_forward_hook(keep)
    loss, logs = module.loss(batch)
    h.remove()
    loss.backward()
    # per chunk: the denoising passes of the sample (regression: up to the exit step, which carries the
    # gradient; denoise: all, none differentiable, then one differentiable pass over the noised true chunk),
    # then one commit pass; context chunk: one commit pass
    differentiable = [a for a in acts if a.requires_grad]
    assert len(differentiable) == 2  # one exit step in each of the two generated chunks
    assert all(a.grad is not None for a in differentiable)
    assert len(acts) > len(differentiable)  # pre-exit steps and commit passes ran, without gradient
    assert module.model.blocks[0].ada.weight.grad.abs().sum() > 0  # (attention gates start at zero)


def test_self_forcing_regression_weight_scales_the_training_loss(cache, run_data):
    """Without DMD the weighted regression is the training loss; validation reports the plain error."""
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    train, val = {}, {}
    for w in (1.0, 2.5):
        cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "self_forcing", "regression_weight": w,
                                                                 "objective": "regression"}})
        torch.manual_seed(0)
        module = make_module(cfg, resolve_stages(cfg)[0], run_data)
        module.train()
        train[w] = module.loss(batch)[0].item()
        module.eval()
        val[w] = module.loss(batch)[0].item()
    assert train[2.5] == pytest.approx(2.5 * train[1.0], rel=1e-5)
    assert val[2.5] == pytest.approx(val[1.0], rel=1e-5)  # the same rollout, unweighted


def test_self_forcing_trains_through_the_inference_backend(cache, run_data, monkeypatch):
    """Self forcing calls the configured attention backend: the same code path as inference."""
    cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "self_forcing"}})
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    calls = []
    original = type(module.backend).attend
    monkeypatch.setattr(type(module.backend), "attend", lambda self, *a: calls.append(1) or original(self, *a))
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    module.loss(batch)
    assert len(calls) > 0 and module.rollout.backend is module.backend


def test_step_sampler_shards_the_stream_and_resumes_mid_way():
    from worldkit.training import StepSampler

    size, batch, length = 5, 3, 12  # items per rank: 4 batches of 3; the stream spans several epochs
    ranks = [list(StepSampler(size, 7, length, rank=r, world=2, batch=batch)) for r in range(2)]
    single = list(StepSampler(size, 7, 2 * length, batch=batch))
    # global batch k = rank 0's k-th batch then rank 1's: together the single-process stream, in order
    merged = [x for k in range(length // batch) for r in range(2) for x in ranks[r][k * batch:(k + 1) * batch]]
    assert merged == single
    assert all(sorted(single[e * size:(e + 1) * size]) == list(range(size)) for e in range(len(single) // size))
    resumed = StepSampler(size, 7, length, rank=1, world=2, batch=batch)
    resumed.start = 5
    assert list(resumed) == ranks[1][5:]
    assert len(resumed) == length  # the whole run: Lightning counts the restored batches itself


@pytest.mark.parametrize("dmd, cut, accumulate", [(False, 2, 1), (False, 5, 1), (False, 1, 2), (False, 0, 2), (True, 5, 1)],
                         ids=["diffusion_forcing_early", "diffusion_forcing_late", "accumulate", "accumulate_first_step",
                              "self_forcing_dmd"])
def test_resume_reaches_the_same_weights(dmd, cut, accumulate, cache, run_data, tmp_path, request):
    """Interrupted during step ``cut + 1`` of 8 (before or after half way, mid accumulation) and resumed: the
    same batches in the same order, so the same weights as an uninterrupted run."""
    import lightning as L

    budget = dict(max_steps=8, val_every=4, accumulate=accumulate)
    cfg = wk_config.validate(dmd_raw(cache, **budget) if dmd else tiny_raw(cache, **budget))
    stage = resolve_stages(cfg)[0]
    init = request.getfixturevalue("start_weights") if dmd else None
    full = fit_stage(cfg, stage, run_data, tmp_path / "full", init=init, resume=False)

    class Interrupt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == cut * accumulate:  # step cut + 1's first micro-batch: mid-accumulation when accumulating
                raise KeyboardInterrupt

    orig = experiment.make_trainer
    experiment.make_trainer = lambda tr, d, cbs, lg, val_batches=None: orig(tr, d, [*cbs, Interrupt()], lg, val_batches)
    try:
        with pytest.raises(KeyboardInterrupt, match="--resume"):
            fit_stage(cfg, stage, run_data, tmp_path / "cut", init=init, resume=False)
    finally:
        experiment.make_trainer = orig
    assert (tmp_path / "cut" / "stages" / stage.dirname / "checkpoints" / "last.ckpt").exists()
    resumed = fit_stage(cfg, stage, run_data, tmp_path / "cut", init=init, resume=True)
    assert resumed.global_step == full.global_step == 8
    ckpts = tmp_path / "cut" / "stages" / stage.dirname / "checkpoints"
    assert sorted(c.name for c in ckpts.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]  # overwritten, not versioned
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 8
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def val_steps(run):
        return sorted({e.step for e in EventAccumulator(str(run / "tb" / stage.dirname)).Reload().Scalars("val/loss")})

    assert val_steps(tmp_path / "cut") == val_steps(tmp_path / "full") == [3, 7]  # the same steps (Lightning logs from 0)
    full_state, resumed_state = full.state_dict(), resumed.state_dict()  # with a DMD critic and teacher
    assert full_state.keys() == resumed_state.keys()
    for n, a in full_state.items():
        torch.testing.assert_close(a, resumed_state[n], rtol=0, atol=1e-6, msg=n)


def test_a_stage_is_evaluated_with_the_windows_it_trained_with(cache, tmp_path, monkeypatch):
    """A stage that trains on shorter clips keeps its memory's default window (the clip) in evaluation;
    horizons still count in the experiment's clip, so every stage is scored on the same frames."""
    raw = tiny_raw(cache, max_steps=1, val_every=1)
    raw["memory"] = {"type": "sliding_window"}
    raw["stages"] = [{"name": "short", "trainer": {"type": "diffusion_forcing"}, "train": {"clip_frames": 4}}]
    seen, real = [], experiment.evaluate
    monkeypatch.setattr(experiment, "evaluate", lambda rollout, *a, **k: seen.append((rollout.train_frames, a[3])) or real(rollout, *a, **k))
    choices = {"pbsa": [], "selection": [{"class": "c", "kept": "triton", "timings_ms": {"torch": 0.7, "triton": 0.1}}]}
    sliding_window = experiment.registry.get("memory", "sliding_window")  # a plugin's Plugin.report, as pbsa's on a CUDA run
    monkeypatch.setattr(sliding_window, "report", classmethod(lambda cls: {"kernels.json": choices}))
    experiment.run(wk_config.validate(raw), tmp_path)
    assert seen == [(4, 6)]
    assert json.loads((tmp_path / "stages" / "0-short" / "kernels.json").read_text()) == choices


def test_periodic_evaluation_is_not_repeated_after_a_resume(cache, run_data, tmp_path):
    import lightning as L
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = wk_config.validate(tiny_raw(cache, max_steps=4, val_every=4, eval_every=2, accumulate=2))
    stage = resolve_stages(cfg)[0]

    class Interrupt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 4:  # the first micro-batch of step 3, after the evaluation at step 2
                raise KeyboardInterrupt

    orig = experiment.make_trainer
    experiment.make_trainer = lambda tr, d, cbs, lg, val_batches=None: orig(tr, d, [*cbs, Interrupt()], lg, val_batches)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_stage(cfg, stage, run_data, tmp_path, init=None, resume=False)
    finally:
        experiment.make_trainer = orig
    fit_stage(cfg, stage, run_data, tmp_path, init=None, resume=True)
    acc = EventAccumulator(str(tmp_path / "tb" / stage.dirname)).Reload()
    assert [e.step for e in acc.Scalars("eval_periodic/psnr@1x")] == [2, 4]


def test_nan_loss_stops_with_a_clear_message(cache, run_data, tmp_path):
    from worldkit.training import NonFiniteLoss

    cfg = wk_config.validate(tiny_raw(cache, max_steps=4, lr=1e30, grad_clip=None, warmup_steps=0))
    with pytest.raises(NonFiniteLoss, match="last good checkpoint"):
        fit_stage(cfg, resolve_stages(cfg)[0], run_data, tmp_path, init=None, resume=False)


def test_staged_run_end_to_end_from_the_cli(cache, tmp_path, monkeypatch, capsys):
    raw = tiny_raw(cache, max_steps=3, val_every=3)
    raw["stages"] = [
        {"name": "dense_df", "trainer": {"type": "diffusion_forcing"}},
        {"name": "window_sf", "trainer": {"type": "self_forcing"}, "memory": {"type": "sliding_window", "window_frames": 4}},
    ]
    raw["compare"] = [{"name": "sink_sf", "trainer": {"type": "self_forcing"}, "memory": {"type": "sink", "window_frames": 4}}]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    from worldkit.cli import main

    loaded = []
    orig = experiment.load_weights
    monkeypatch.setattr(experiment, "load_weights", lambda model, p: loaded.append(p) or orig(model, p))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    for stage in ("0-dense_df", "1-window_sf", "2-sink_sf"):
        assert (run / "stages" / stage / "model.pt").exists()
        assert (run / "stages" / stage / "eval.json").exists()
    rows = [ln.split("|")[1].strip() for ln in (run / "results.md").read_text().splitlines() if ln.startswith("| `")]
    assert rows == ["`0-dense_df`", "`1-window_sf`", "`2-sink_sf`"]
    assert {"psnr_vs_horizon.png", "cost_vs_horizon.png", "results.csv"} <= {p.name for p in run.iterdir()}
    # stage 2 starts from stage 1's weights, and so does the variant compared with stage 2
    assert loaded == [run / "stages" / "0-dense_df" / "model.pt"] * 2
    # a finished stage ships as a base checkpoint with its model card
    from worldkit import cards, checkpoints

    monkeypatch.setattr(checkpoints, "BASE_DIR", tmp_path / "base")
    card = cards.write_card(run, "tiny", command="worldkit run tiny.yaml", hardware="2 CPU cores", stage="0-dense_df")
    text = card.read_text()
    assert "`worldkit run tiny.yaml`" in text and "3 optimizer steps" in text
    assert "model of the `pendulum` environment" in text and "diffusion forcing with the `dense` KV-cache policy" in text
    assert "to 2x the" in text  # the run's longest horizon
    assert "| skill vs persistence | model |" in text and "| state-probe error (std) | ground truth (floor) |" in text
    assert checkpoints.resolve_init("base/tiny") == tmp_path / "base" / "tiny.pt"
    # the attention analysis reads the finished run
    capsys.readouterr()
    assert main(["analyze", "attention", str(run), "--episodes", "1", "--window", "4"]) == 0  # horizon: the run's 2
    assert {p.name for p in (run / "analysis" / "1-window_sf").iterdir()} == {
        "attention.json", "attention_map.png", "attention_stripes.png"}
    assert "model: stages/1-window_sf/model.pt" in capsys.readouterr().out  # the chain's last stage, not the variant
    assert main(["analyze", "attention", str(run), "--episodes", "1", "--horizon", "2", "--stage", "sink_sf"]) == 0
    assert "model: stages/2-sink_sf/model.pt" in capsys.readouterr().out
    assert {p.name for p in (run / "analysis").iterdir()} == {"1-window_sf", "2-sink_sf"}  # one folder per stage
    for bad, words in ((["--horizon", "0"], "--horizon must be at least 1; got 0"), (["--episodes", "9"], "2 test episodes"),
                       (["--stage", "nope"], "choices: 0-dense_df, 1-window_sf, 2-sink_sf")):
        assert main(["analyze", "attention", str(run), *bad]) == 2
        assert words in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes(cache, tmp_path):
    raw = tiny_raw(cache, max_steps=2, val_every=2, strategy="ddp", devices=2, accelerator="cpu")
    raw["stages"] = [{"name": "a", "trainer": {"type": "diffusion_forcing"}}, {"name": "b", "trainer": {"type": "teacher_forcing"}},
                     {"name": "c", "trainer": {"type": "self_forcing", "dmd": {"critic_ratio": 2}},
                      "train": {"strategy": "ddp_find_unused_parameters_true"}}]
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "worldkit", "run", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank draws its own share of max_steps batches: one pass, no second epoch over repeated data
    log = proc.stdout + proc.stderr
    assert "Epoch 0: 100%" in log and "Epoch 1" not in log
    for stage in ("0-a", "1-b", "2-c"):
        ckpts = sorted(c.name for c in (tmp_path / "run" / "stages" / stage / "checkpoints").glob("*.ckpt"))
        assert ckpts == ["best.ckpt", "last.ckpt"]
        assert (tmp_path / "run" / "stages" / stage / "eval.json").exists()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_periodic_evaluation_and_validation_follow_optimizer_steps(accumulate, cache, run_data, tmp_path):
    """eval_every and val_every count optimizer steps, however many micro-batches each accumulates."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = wk_config.validate(tiny_raw(cache, max_steps=4, val_every=2, eval_every=2, accumulate=accumulate))
    stage = resolve_stages(cfg)[0]
    fit_stage(cfg, stage, run_data, tmp_path, init=None, resume=False)
    acc = EventAccumulator(str(tmp_path / "tb" / stage.dirname)).Reload()
    assert [e.step for e in acc.Scalars("eval_periodic/psnr@1x")] == [2, 4]
    assert len(acc.Scalars("val/loss")) == 2


# ---- self forcing with DMD --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def start_weights(run_data, tmp_path_factory):
    """A checkpoint to start DMD stages from (its teacher is then these weights, not random ones)."""
    from worldkit.checkpoints import save_weights

    cfg = wk_config.validate(tiny_raw(run_data.train_file.parent))
    path = tmp_path_factory.mktemp("start") / "start.pt"
    save_weights(make_module(cfg, resolve_stages(cfg)[0], run_data).model, path)
    return path


def dmd_raw(cache, dmd=None, regression_weight=1.0, **train):
    return {**tiny_raw(cache, **train), "trainer": {"type": "self_forcing", "regression_weight": regression_weight,
                                                   "objective": "regression", "dmd": {"critic_ratio": 2, **(dmd or {})}}}


def test_dmd_loss_gradient_is_the_score_difference():
    from worldkit_plugins.trainers.self_forcing import dmd_loss

    g = torch.Generator().manual_seed(0)
    gen = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    real, fake = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    dmd_loss(gen, real, fake).backward()
    w = (gen.detach() - real).abs().mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(gen.grad, (fake - real) / w / gen.numel())


def test_dmd_starts_with_critic_equal_to_teacher_and_teacher_equal_to_the_starting_weights(cache, run_data):
    cfg = wk_config.validate(dmd_raw(cache, regression_weight=0.0))
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    module.train()
    nets = module.aux["dmd"]
    assert not bool(nets.ready)
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    loss, logs = module.loss(batch)
    assert bool(nets.ready) and {"critic_loss", "dmd_loss", "truth_loss"} <= set(logs)
    for (n, p), q in zip(module.model.state_dict().items(), nets.teacher.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    loss.backward()
    # the critic equals the teacher: the two scores agree and the generator gets no distillation gradient
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in module.model.parameters())
    assert sum(p.grad.abs().sum() for p in nets.critic.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in nets.teacher.parameters())
    # once the critic has moved away from the teacher, the generator is pushed
    module.zero_grad()
    with torch.no_grad():
        for p in nets.critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.loss(batch)[0].backward()
    assert sum(p.grad.abs().sum() for p in module.model.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in nets.teacher.parameters())


def test_dmd_updates_the_critic_every_step_and_the_generator_every_ratio_steps(cache, run_data, tmp_path, start_weights):
    import lightning as L

    cfg = wk_config.validate(dmd_raw(cache, dmd={"critic_ratio": 2, "critic_lr_scale": 0.5}, max_steps=4, val_every=4))
    snaps = []

    def flat(net):
        return torch.cat([p.detach().flatten().clone() for p in net.parameters()])

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            nets = pl_module.aux["dmd"]
            snaps.append((flat(pl_module.model), flat(nets.critic), flat(nets.teacher)))

    orig = experiment.make_trainer
    experiment.make_trainer = lambda tr, d, cbs, lg, val_batches=None: orig(tr, d, [*cbs, Snap()], lg, val_batches)
    try:
        module = fit_stage(cfg, resolve_stages(cfg)[0], run_data, tmp_path, init=start_weights, resume=False)
    finally:
        experiment.make_trainer = orig
    lrs = sorted({g["initial_lr"] for g in module.trainer.optimizers[0].param_groups})
    assert lrs == pytest.approx([1e-3, 2e-3])  # critic at half train.lr
    gen_moved = [not torch.equal(a[0], b[0]) for a, b in zip(snaps, snaps[1:])]
    critic_moved = [not torch.equal(a[1], b[1]) for a, b in zip(snaps, snaps[1:])]
    assert gen_moved == [False, True, False]  # steps 1, 2, 3: the generator trains on even steps only
    assert critic_moved == [True, True, True]
    assert all(torch.equal(snaps[0][2], s[2]) for s in snaps)  # the teacher stays frozen
    # the checkpoint holds the critic and teacher, and the model's weights file does not
    ckpt = torch.load(tmp_path / "stages" / "0-train" / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("aux.dmd.critic.") for k in ckpt["state_dict"])
    assert bool(ckpt["state_dict"]["aux.dmd.ready"])


@pytest.mark.slow
def test_dmd_alone_carries_the_teachers_knowledge_of_the_data(cache, run_data, tmp_path):
    """A generator trained by DMD alone (no ground-truth term) from random weights approaches the data
    when the teacher was trained on it, and does not when the teacher is itself random."""
    from worldkit.checkpoints import save_weights
    from worldkit.model import WorldModel

    cfg = wk_config.validate({**tiny_raw(cache, max_steps=100, val_every=100, batch_size=8),
                              "trainer": {"type": "diffusion_forcing"}})
    teacher = fit_stage(cfg, resolve_stages(cfg)[0], run_data, tmp_path / "teacher", init=None, resume=False)
    save_weights(teacher.model, tmp_path / "trained.pt")
    torch.manual_seed(123)
    save_weights(WorldModel(**teacher.model.hparams), tmp_path / "random.pt")
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("val", 6), batch_size=4)))
    errors = {}
    for name in ("trained", "random"):
        # the critic at the generator's rate: at this tiny scale and lr, Self-Forcing's 0.2 lets it lag and diverge
        raw = dmd_raw(cache, dmd={"teacher": str(tmp_path / f"{name}.pt"), "critic_lr_scale": 1.0}, regression_weight=0.0,
                      max_steps=100, val_every=100, batch_size=8)
        cfg = wk_config.validate(raw)
        stage = resolve_stages(cfg)[0]
        before = val_loss(make_module(cfg, stage, run_data), batch)  # the generator's error against the frames
        after = val_loss(fit_stage(cfg, stage, run_data, tmp_path / name, init=None, resume=False), batch)
        errors[name] = (before, after)
    assert errors["trained"][1] < 0.5 * errors["trained"][0], errors
    assert errors["random"][1] > 0.8 * errors["random"][0], errors


@pytest.mark.parametrize("history", ["clean", "noisy"])
def test_dmd_scores_a_chunk_from_the_history_it_is_configured_to_see(history):
    """history clean: a generated chunk is scored from the clean frames before it, so the noise drawn for
    earlier chunks does not matter; noisy: it does. Later chunks never matter (causal)."""
    from worldkit.model import WorldModel
    from worldkit_plugins.trainers.self_forcing import Scorer

    torch.manual_seed(0)
    net = WorldModel(frame_size=16, action_dim=1, patch=4, width=32, layers=2, heads=2, block_patches=2, chunk_frames=2)
    for p in net.parameters():  # zero-initialised gates would hide every attention path
        p.data.add_(0.05 * torch.randn_like(p))
    clip, actions = torch.randn(1, 6, 3, 16, 16), torch.randn(1, 6, 1)
    level, eps = torch.full((1, 1), 0.7), torch.randn(1, 6, 3, 16, 16)
    out = Scorer(clip, actions, 2, 2, history)(net, level, eps)[1]  # frames 2..5: chunks 1 and 2
    eps2 = eps.clone()
    eps2[:, 2:4] = torch.randn(1, 2, 3, 16, 16)  # other noise on chunk 1
    out2 = Scorer(clip, actions, 2, 2, history)(net, level, eps2)[1]
    later = clip.clone()
    later[:, 4:] = torch.randn(1, 2, 3, 16, 16)  # other frames in chunk 2
    out3 = Scorer(later, actions, 2, 2, history)(net, level, eps)[1]
    torch.testing.assert_close(out3[:, :2], out[:, :2])  # chunk 1 does not see chunk 2
    assert not torch.allclose(out2[:, :2], out[:, :2])  # chunk 1 sees its own noise
    if history == "clean":
        torch.testing.assert_close(out2[:, 2:], out[:, 2:])
    else:
        assert not torch.allclose(out2[:, 2:], out[:, 2:], atol=1e-4)


def test_self_forcing_exit_last_differentiates_the_final_denoising_pass(cache, run_data):
    """exit: last runs every denoising step of every chunk, as inference does; only the last carries gradient."""
    cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "self_forcing", "exit": "last",
                                                             "objective": "regression"}})
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    grads = []
    h = module.model.blocks[0].attn.register_forward_hook(lambda mod, inp, out: grads.append(out.requires_grad))
    loss, logs = module.loss(batch)
    h.remove()
    assert logs["mean_exit_step"] == module.rollout.steps - 1 == 1
    # context commit; then per chunk: denoise step 0, denoise step 1 (gradient), commit
    assert grads == [False, False, True, False, False, True, False]


def test_ema_follows_each_optimizer_step_once(cache, run_data, tmp_path):
    """With accumulation the EMA is updated once per optimizer step (not per micro-batch), and the
    micro-batches of one step draw different noise."""
    import lightning as L

    cfg = wk_config.validate(tiny_raw(cache, max_steps=3, val_every=3, ema=0.5, accumulate=2, batch_size=2))
    stage = resolve_stages(cfg)[0]
    start = make_module(cfg, stage, run_data).model.state_dict()  # same seed: the initial weights
    after_steps = {}

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after_steps[trainer.global_step] = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    orig = experiment.make_trainer
    experiment.make_trainer = lambda tr, d, cbs, lg, val_batches=None: orig(tr, d, [*cbs, Snap()], lg, val_batches)
    try:
        module = fit_stage(cfg, stage, run_data, tmp_path, init=None, resume=False)
    finally:
        experiment.make_trainer = orig
    assert sorted(after_steps) == [0, 1, 2, 3]  # global step 0 is the first micro-batch, before any update
    expected = {k: v.clone() for k, v in start.items()}
    for step in (1, 2, 3):
        for k in expected:
            if expected[k].is_floating_point():
                expected[k].lerp_(after_steps[step][k], 1 - ema_decay(0.5, step))
    for k, v in module.ema_model.state_dict().items():
        torch.testing.assert_close(v, expected[k], msg=k)
    module._micro = 0
    a = torch.rand(4, generator=module.context.generator())
    module._micro = 1
    b = torch.rand(4, generator=module.context.generator())
    module._micro = 0
    assert not torch.equal(a, b) and torch.equal(a, torch.rand(4, generator=module.context.generator()))


def test_ema_warms_up_so_the_starting_weights_fade():
    """With a fixed 0.999 a run stopped after 1,500 steps keeps 22 % of its random start in the EMA;
    warmed up, the start is gone."""
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11) and ema_decay(0.999, 10**6) == 0.999
    assert ema_decay(0.5, 3) == pytest.approx(4 / 13) and ema_decay(0.5, 100) == 0.5
    share = 1.0
    for step in range(1, 1501):
        share *= ema_decay(0.999, step)
    assert share < 0.01 < 0.999**1500


def test_dmd_refuses_a_random_teacher_and_fsdp(cache, run_data, tmp_path):
    from worldkit.errors import WorldkitError

    cfg = wk_config.validate(dmd_raw(cache, max_steps=2))
    with pytest.raises(WorldkitError, match="teacher would be random"):
        fit_stage(cfg, resolve_stages(cfg)[0], run_data, tmp_path / "a", init=None, resume=False)
    from worldkit.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.dmd: trains a critic beside the model, which train.strategy=fsdp"):
        wk_config.validate(dmd_raw(cache, dmd={"teacher": "base/pendulum"}, max_steps=2, strategy="fsdp"))
    # a trainer without that check (a config built in code): refused when its networks are attached
    cfg = wk_config.validate(dmd_raw(cache, dmd={"teacher": "base/pendulum"}, max_steps=2))
    cfg.train.strategy = "fsdp"
    with pytest.raises(WorldkitError, match="fsdp"):
        fit_stage(cfg, resolve_stages(cfg)[0], run_data, tmp_path / "b", init=None, resume=False)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_self_forcing_denoise_target_is_the_true_chunk_at_the_exit_level(prediction, cache, run_data, monkeypatch):
    """objective denoise: each chunk's differentiable pass reads the *true* chunk noised to the exit step's
    level of the sampler (not the model's own sample), and the loss is the denoising error against the true
    frames' target, averaged over chunks; the cache holds the model's own samples."""
    from worldkit import diffusion

    raw = {**tiny_raw(cache), "trainer": {"type": "self_forcing", "exit": "last"}}
    raw["model"] = {**raw["model"], "prediction": prediction}
    cfg = wk_config.validate(raw)
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    for p in module.model.parameters():  # zero-initialised gates would hide every attention path
        p.data.add_(0.02 * torch.randn_like(p))
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    reads, commits = [], []
    read, commit = type(module.rollout).read, type(module.rollout).commit
    monkeypatch.setattr(type(module.rollout), "read",
                        lambda self, x_t, t, a: reads.append((x_t, t, read(self, x_t, t, a))) or reads[-1][2])
    monkeypatch.setattr(type(module.rollout), "commit",
                        lambda self, f, a, level=0.0: commits.append(f) or commit(self, f, a, level))
    loss, logs = module.loss(batch)
    x = batch["frames"]
    level = float(diffusion.schedule(2)[1])  # two sampler steps; exit last: the second level, 0.5
    assert len(reads) == 2 and len(commits) == 2
    expected = []
    for c, (x_t, t, pred) in enumerate(reads):
        true = x[:, 2 + 2 * c: 4 + 2 * c]
        torch.testing.assert_close(t, torch.full((2, 2), level))
        eps = (x_t - (1 - level) * true) / level  # the noise the pass was given: x_t is the true chunk noised
        assert eps.std() == pytest.approx(1.0, abs=0.1)
        expected.append((pred - diffusion.target(true, eps, prediction)).pow(2).mean())
        assert not torch.allclose(commits[c], true, atol=1e-2)  # the cache takes the model's own sample
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    assert loss.requires_grad and logs["rollout_mse"] > 0


def test_self_forcing_streams_past_the_clip_with_the_cache_carried(cache, run_data, monkeypatch):
    """segments 2: the trainer reads clips of twice train.clip_frames, the rollout runs through the clip
    boundary with one cache (frames past the clip are committed to it, the window slides), every chunk is
    trained, and no gradient reaches the cache."""
    raw = {**tiny_raw(cache), "trainer": {"type": "self_forcing", "segments": 2},
           "memory": {"type": "sliding_window", "window_frames": 4}}
    cfg = wk_config.validate(raw)
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    assert module.trainer_plugin.data_frames(6) == 12
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 12), batch_size=2)))
    resets, reads = [], []
    reset, read = type(module.rollout).reset, type(module.rollout).read
    monkeypatch.setattr(type(module.rollout), "reset", lambda self, *a, **k: resets.append(1) or reset(self, *a, **k))
    monkeypatch.setattr(type(module.rollout), "read",
                        lambda self, x_t, t, a: reads.append(int(self.memory.frames_seen)) or read(self, x_t, t, a))
    loss, _ = module.loss(batch)
    assert resets == [1]  # one cache for the whole 12 frames
    assert reads == [2, 4, 6, 8, 10]  # the chunks after the clip's 6 frames read a cache that holds them
    memory = module.memory
    assert memory.frames_seen == 12 and memory.slots_in_use() < 12 * memory.spec.blocks_per_frame  # the window slid
    assert not any(t.requires_grad for t in (memory.k, memory.v))
    loss.backward()
    assert module.model.blocks[0].ada.weight.grad.abs().sum() > 0


def test_self_forcing_segments_must_fit_the_episodes(cache):
    raw = {**tiny_raw(cache), "trainer": {"type": "self_forcing", "segments": 3}}  # 18 frames of 16-frame episodes
    with pytest.raises(Exception, match="segments"):
        wk_config.validate(raw)
    wk_config.validate({**raw, "trainer": {"type": "self_forcing", "segments": 2}})


def test_streaming_stage_feeds_the_trainer_clips_of_all_its_segments(cache, run_data, tmp_path, monkeypatch):
    from worldkit_plugins.trainers.self_forcing import SelfForcing

    seen = []
    loss = SelfForcing.loss
    monkeypatch.setattr(SelfForcing, "loss", lambda self, m, b: seen.append(b["frames"].shape[1]) or loss(self, m, b))
    cfg = wk_config.validate({**tiny_raw(cache, max_steps=2, val_every=2),
                              "trainer": {"type": "self_forcing", "segments": 2}})
    fit_stage(cfg, resolve_stages(cfg)[0], run_data, tmp_path, init=None, resume=False)
    assert seen and set(seen) == {12}


def test_self_forcing_context_noise_commits_noised_samples_at_that_level(cache, run_data, monkeypatch):
    cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "self_forcing", "context_noise": 0.3}})
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    levels = []
    commit = type(module.rollout).commit
    monkeypatch.setattr(type(module.rollout), "commit",
                        lambda self, f, a, level=0.0: levels.append(level) or commit(self, f, a, level))
    module.train()
    module.loss(batch)
    assert levels == [0.3, 0.3]
    levels.clear()
    module.eval()  # validation rolls out as inference does: clean commits
    with torch.no_grad():
        module.loss(batch)
    assert levels == [0.0, 0.0]


def test_teacher_guidance_extrapolates_from_the_unconditional_score():
    from worldkit.model import WorldModel
    from worldkit_plugins.trainers.self_forcing import Scorer

    torch.manual_seed(0)
    net = WorldModel(frame_size=16, action_dim=1, patch=4, width=32, layers=2, heads=2, block_patches=2, chunk_frames=2)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    clip, actions = torch.randn(1, 6, 3, 16, 16), torch.randn(1, 6, 1)
    level, eps = torch.full((1, 1), 0.6), torch.randn(1, 6, 3, 16, 16)
    score = Scorer(clip, actions, 2, 2, "clean")
    cond = score(net, level, eps)[0]
    uncond = Scorer(clip, torch.zeros_like(actions), 2, 2, "clean")(net, level, eps)[0]
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(score(net, level, eps, guidance=3.0)[0], uncond + 3.0 * (cond - uncond))


def test_action_dropout_zeroes_whole_clips_of_actions(cache, run_data, monkeypatch):
    cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "diffusion_forcing", "action_dropout": 0.5}})
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    seen = []
    forward = type(module.model).forward
    monkeypatch.setattr(type(module.model), "forward", lambda self, x, t, a, ctx: seen.append(a) or forward(self, x, t, a, ctx))
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=8)))
    batch["actions"] = batch["actions"] + 1.0  # no action is zero by chance
    module.train()
    module.loss(batch)
    zeroed = (seen[-1] == 0).all(dim=(1, 2))
    assert 0 < int(zeroed.sum()) < 8 and ((seen[-1] != 0).all(dim=(1, 2)) | zeroed).all()
    module.eval()
    module.loss(batch)
    assert (seen[-1] != 0).all()  # validation keeps the actions


def test_train_betas_reach_the_optimizer(cache, run_data):
    cfg = wk_config.validate({**tiny_raw(cache, betas=[0.0, 0.999]), "trainer": {"type": "diffusion_forcing"}})
    opt = make_module(cfg, resolve_stages(cfg)[0], run_data).configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else (opt[0][0] if isinstance(opt, tuple) else opt)
    assert opt.param_groups[0]["betas"] == (0.0, 0.999)


def test_self_forcing_commit_truth_teacher_forces_through_the_memory_without_sampling(cache, run_data, monkeypatch):
    """commit: truth: the cache takes the true chunks (noised by context_noise, at that level), nothing is
    sampled, and the loss is the denoising loss of each true chunk read against that cache."""
    cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "self_forcing", "commit": "truth",
                                                             "context_noise": 0.2}})
    module = make_module(cfg, resolve_stages(cfg)[0], run_data)
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("train", 6), batch_size=2)))
    commits, samples = [], []
    commit, sample = type(module.rollout).commit, type(module.rollout).sample
    monkeypatch.setattr(type(module.rollout), "commit",
                        lambda self, f, a, level=0.0: commits.append((f, level)) or commit(self, f, a, level))
    monkeypatch.setattr(type(module.rollout), "sample", lambda self, *a, **k: samples.append(1) or sample(self, *a, **k))
    module.train()
    loss, logs = module.loss(batch)
    assert samples == [] and "rollout_mse" not in logs and loss.requires_grad
    x = batch["frames"]
    assert len(commits) == 2  # the clip's two chunks after its 2 context frames
    for c, (f, level) in enumerate(commits):
        true = x[:, 2 + 2 * c: 4 + 2 * c]
        assert level == 0.2
        eps = (f - 0.8 * true) / 0.2  # the true chunk, noised to 0.2
        assert eps.std() == pytest.approx(1.0, abs=0.15)


def test_a_trainer_plugin_sees_a_typed_context_not_the_lightning_module(cache, run_data):
    """The loss a stage trains with is the trainer plugin's loss on a ``TrainContext``: built around the
    same weights and plugins without Lightning (``TrainContext.of``), it gives the same validation loss,
    and the context carries the stage's typed ``TrainConfig``."""
    from worldkit import registry
    from worldkit.schema import TrainConfig
    from worldkit.train_context import TrainContext

    cfg = wk_config.validate({**tiny_raw(cache), "trainer": {"type": "teacher_forcing"}})
    stage = resolve_stages(cfg)[0]
    module = make_module(cfg, stage, run_data).eval()
    ctx = module.context
    assert isinstance(ctx.train, TrainConfig) and ctx.train.clip_frames == 6 and ctx.train.lr == 2e-3
    assert ctx.model is module.model and ctx.aux is module.aux and not ctx.training and ctx.step == 0
    batch = next(iter(torch.utils.data.DataLoader(run_data.clips("val", 6), batch_size=2)))
    bare = TrainContext.of(module.model, registry.build("memory", stage.memory), registry.build("selector", stage.selector),
                           registry.build("attention", stage.attention), train=ctx.train, seed=ctx.seed)
    with torch.no_grad():
        expected = module.loss(batch)[0]
        got = module.trainer_plugin.loss(bare, batch)[0]
        other_seed = module.trainer_plugin.loss(TrainContext.of(module.model, bare.memory, bare.selector, bare.backend,
                                                                train=ctx.train, seed=ctx.seed + 1), batch)[0]
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(other_seed, expected)  # the draws follow the context's seed
    module.train()  # the training loss (step 0, no Lightning trainer attached) draws as a bare context in training mode
    train_ctx = TrainContext.of(module.model, bare.memory, bare.selector, bare.backend, train=ctx.train, seed=ctx.seed,
                                training=True)
    assert ctx.training and ctx.step == 0 and train_ctx.training and train_ctx.step == 0
    with torch.no_grad():
        torch.testing.assert_close(module.trainer_plugin.loss(train_ctx, batch)[0], module.loss(batch)[0])
        assert not torch.allclose(module.loss(batch)[0], expected)  # training and validation draw differently
