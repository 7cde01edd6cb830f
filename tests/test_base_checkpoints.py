"""The shipped base checkpoints load by name and predict better than doing nothing."""
import numpy as np
import pytest
import torch

from worldkit import data as wk_data
from worldkit import metrics, registry
from worldkit.frames import frames_to_tensor
from worldkit.checkpoints import BASE_DIR, load_weights, resolve_init
from worldkit.model import WorldModel
from worldkit.rollout import Rollout

SHIPPED = sorted(p.stem for p in BASE_DIR.glob("*.pt"))


@pytest.mark.parametrize("name", ["pendulum", "memory"])
def test_base_is_shipped_with_its_card(name):
    assert name in SHIPPED
    card = (BASE_DIR / f"{name}.md").read_text()
    assert "command:" in card and "| skill vs persistence | model |" in card
    assert (BASE_DIR / f"{name}.pt").stat().st_size < 10 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_has_skill_at_1x(name, tmp_path):
    """Four held-out episodes, fixed sampling seed: the model beats persistence over the first clip."""
    path = resolve_init(f"base/{name}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = WorldModel(**blob["hparams"])
    load_weights(model, path)
    model.eval()
    env_cfg = {"size": blob["hparams"]["frame_size"]}
    test = wk_data.load_split(name, env_cfg, "test", 4, 2 + 16, tmp_path, workers=1, progress=False)
    gt = frames_to_tensor(test.frames)  # (4, 18, 3, H, W)
    act = torch.from_numpy(test.actions).float()
    r = Rollout(model, registry.build("memory", "dense"), registry.build("selector", "all"),
                registry.build("attention", "sdpa"), steps=4, train_frames=16)
    pred = r.run(gt[:, :2], act, 16, generator=torch.Generator().manual_seed(0))
    target = gt[:, 2:]
    skill = metrics.skill(metrics.mse(pred, target).mean(1), metrics.mse(metrics.persistence_forecast(gt[:, :2], 16), target).mean(1))
    assert np.isfinite(skill.numpy()).all()
    assert skill.mean() > 0, skill
