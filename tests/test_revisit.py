"""The revisit room, the recall and quality metrics, and the envs' observable steps: known answers on real rendered episodes."""
import math

import numpy as np
import pytest
import torch

from worldkit import data as wk_data  # torch and Lightning before MuJoCo's GL context
from worldkit import memory_metrics as mm
from worldkit import quality
from worldkit.frames import frames_to_tensor
from worldkit_plugins.envs.revisit import PALETTE, RevisitRoom, schedule, tour_frames

FRAMES = 10 + 170  # the tour and one round of the default gaps (at most 159 frames)


@pytest.fixture(scope="module")
def episodes():
    env = RevisitRoom()
    eps = [wk_data.record_episode(env, seed, FRAMES) for seed in range(6)]
    env.close()
    states = np.stack([e.states for e in eps])  # (N, T, S)
    frames = frames_to_tensor(np.stack([e.frames for e in eps]))  # (N, T, 3, H, W)
    actions = np.stack([e.actions for e in eps])
    return frames, states, actions, RevisitRoom.recall_targets(RevisitRoom.Config(), states)


def test_the_tour_shows_every_object_and_fills_whole_chunks(episodes):
    _, _, _, targets = episodes
    first = tour_frames(RevisitRoom.Config())
    assert first % 2 == 0
    assert targets.seen[:, :first].any(1).all(), "an object the context never shows cannot be recalled"


def test_the_schedule_returns_at_every_configured_gap_in_state(episodes):
    _, _, _, targets = episodes
    first = tour_frames(RevisitRoom.Config())
    for n in range(targets.seen.shape[0]):
        gaps = {g for _, _, g in mm.returns(targets.seen[n], first)}
        for wanted in RevisitRoom.Config().gaps:  # a trip of g frames away hides the station g frames
            assert any(abs(g - wanted) <= 1 for g in gaps), (n, wanted, sorted(gaps))


def test_the_schedule_returns_at_every_configured_gap_in_pixels(episodes):
    """At every return the rendered frame shows the object, in its colour, where the state says."""
    frames, _, _, targets = episodes
    first = tour_frames(RevisitRoom.Config())
    labels = mm.palette_labels(frames, targets.palette_hues, targets.rows)  # (N, T, h, W)
    for n in range(frames.shape[0]):
        events = mm.returns(targets.seen[n], first)
        scores = mm.score_returns(labels[n], events, targets.x[n], targets.colour[n], tol=4)
        assert scores[:, 0].min() == 1 and scores[:, 1].mean() > 0.95, scores
        assert np.nanmax(scores[:, 2]) <= 2  # pixels from the true column
        empty = targets.absent[n]
        assert empty.sum() > 40  # the dwells show bare wall
        assert int(((labels[n, empty] >= 0).flatten(1).sum(1) >= mm.MIN_PIXELS).sum()) == 0


def test_actions_never_clip_so_the_stations_stay_put(episodes):
    _, states, actions, _ = episodes
    assert np.abs(actions).max() < 1
    c = RevisitRoom.Config()
    rng = np.random.default_rng(0)
    offsets = schedule(rng, 200, c, [0.0, 185.0])
    assert np.abs(np.diff(offsets)).max() <= c.max_turn
    # the recorded yaw is station A's heading plus the summed actions, nothing lost to clipping ...
    yaw, home = states[..., 0].astype(np.float64), states[..., 1].astype(np.float64)
    summed = np.deg2rad(np.cumsum(actions[..., 0].astype(np.float64), 1) * c.max_turn)  # (N, T)
    drift = (yaw - home - summed + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(drift).max() < 1e-4
    # ... so coming back to A after the tour means its heading again, within the jitter
    back = np.rad2deg(np.abs((yaw - home + np.pi) % (2 * np.pi) - np.pi))[:, 20:]  # (N, T - 20)
    assert (back.min(1) < 4 * c.jitter).all()


def test_colours_are_the_palette_and_distinct_per_episode(episodes):
    _, states, _, targets = episodes
    assert targets.colour.shape[-1] == 6
    for n in range(states.shape[0]):
        assert len(set(targets.colour[n, 0].tolist())) == 6
    assert np.allclose(targets.palette, PALETTE)


def test_recall_known_answers(episodes):
    """Truth hit 1 and no false alarm; the mean frame shows nothing; a wrong colour scores 0 on colour;
    the oracle that pastes the last real sighting recalls; freezing the last frame raises false alarms."""
    frames, _, _, targets = episodes
    first = tour_frames(RevisitRoom.Config())
    wrong = frames[:, :, [2, 0, 1]]  # every hue turned by 120 degrees: other palette colours, same places
    mean = frames.mean((0, 1)).expand_as(frames)
    frozen = torch.cat([frames[:, :first], frames[:, first - 1 : first].expand(-1, FRAMES - first, -1, -1, -1)], 1)
    res = mm.recall({"truth": frames, "wrong": wrong, "mean": mean, "frozen": frozen,
                     "oracle": mm.oracle_forecast(frames, targets.heading, first)}, targets, first)
    stat = res["stats"]
    assert len(res["buckets"]) == len(RevisitRoom.Config().gaps) and min(res["returns"]) > 0
    for k in range(len(res["buckets"])):
        assert stat["hit"]["truth"][k][0] == 1 and stat["colour"]["truth"][k][0] > 0.95
        assert stat["hit"]["mean"][k][0] == 0 and stat["colour"]["mean"][k][0] == 0
        assert stat["hit"]["wrong"][k][0] == 1 and stat["colour"]["wrong"][k][0] == 0
        assert stat["colour"]["oracle"][k][0] > 0.95
    assert res["false_alarm"]["truth"][0] == 0 and res["false_alarm"]["mean"][0] == 0
    assert res["false_alarm"]["frozen"][0] == 1
    # the paired difference of two forecasts of the same episodes
    diff = mm.paired_difference(res["per_episode"]["colour"]["truth"], res["per_episode"]["colour"]["wrong"])
    assert all(d > 0.9 and n == frames.shape[0] for d, _, n in diff)


def test_gap_buckets_hold_their_gap():
    gaps = (4, 8, 16, 32, 64)
    edges = mm.gap_edges(gaps)
    assert [mm.bucket_of(g, edges) for g in (1, 4, 5, 6, 8, 11, 12, 16, 31, 32, 45, 46, 64, 200)] == \
        [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    assert mm.bucket_labels(gaps) == ["4 (1-5)", "8 (6-11)", "16 (12-22)", "32 (23-45)", "64 (46+)"]


def test_returns_counts_only_what_the_context_showed():
    seen = np.zeros((12, 2), bool)
    seen[[0, 1, 6, 7], 0] = True  # seen in the context (first = 2), back after 4 frames away
    seen[[3, 9], 1] = True  # first seen after the context: nothing to recall
    assert mm.returns(seen, first=2) == [(6, 0, 4)]


class _Probe(torch.nn.Module):
    """Features: per-channel mean and mean squared gradient of the current frame."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def features(self, pairs):
        cur = pairs[:, 1]  # (B, 3, H, W)
        return torch.cat([cur.mean((2, 3)), quality.sharpness(cur)[:, None], cur.std((2, 3))], 1)


def test_frechet_truth_sits_at_the_floor_and_the_mean_frame_far_above(episodes):
    frames, _, _, _ = episodes
    first = tour_frames(RevisitRoom.Config())
    truth = frames[:, first:]
    probe = _Probe()
    ref = quality.probe_features(probe, frames[:, 1:first], frames[:, 0])[:, :].flatten(0, 1)  # real frames
    ref = torch.cat([ref, quality.probe_features(probe, frames[:3, first:], frames[:3, first - 1]).flatten(0, 1)])
    mean = frames.mean((0, 1)).expand_as(truth)
    blur = torch.nn.functional.avg_pool2d(truth.flatten(0, 1), 5, 1, 2).view_as(truth)
    res = quality.quality({"truth": truth, "mean": mean, "blur": blur}, truth, frames[:, first - 1],
                          [slice(0, 70), slice(70, None)], probe=probe, reference=ref)
    for k in range(2):
        floor = res["fd"]["truth"][k][0]
        assert res["fd"]["mean"][k][0] > 5 * floor > 0
        assert res["sharpness"]["truth"][k][0] == pytest.approx(1.0)
        assert res["sharpness"]["blur"][k][0] < 0.6
    assert res["motion"]["mean"][1][0] == pytest.approx(0.0, abs=1e-6)  # a frozen frame does not move
    same = quality.probe_features(probe, truth, frames[:, first - 1]).flatten(0, 1)
    assert quality.frechet_distance(same, same) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_gaussians_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64) * 2 + 1
    # N(0, I) vs N(1, 4I): |mu|^2 = 3, traces 3 + 12, cross term 2 * tr((4I)^1/2) = 12 -> 3 + 15 - 12 = 6
    assert quality.frechet_distance(a, b) == pytest.approx(6.0, rel=0.1)
    assert math.isfinite(quality.frechet_distance(a[:1], b))


def test_the_heading_step_is_the_simulators(episodes):
    """observable_step turns the heading by the action: on recorded states it predicts the next
    frame's heading exactly; the physics residual of the truth's own readings is then zero."""
    _, states, actions, _ = episodes
    c = RevisitRoom.Config()
    obs = RevisitRoom.observable(c, states)  # (N, T, S')
    pred, dims = RevisitRoom.observable_step(c, obs[:, :-1], actions[:, 1:])
    assert dims == [0, 1]
    np.testing.assert_allclose(pred, obs[:, 1:, :2], atol=1e-5)
    res = quality.physics_residual(torch.as_tensor(obs, dtype=torch.float64), actions,
                                   lambda o, a: RevisitRoom.observable_step(c, o, a))
    assert torch.isnan(res[:, 0]).all() and res[:, 1:].max() < 1e-5
    frozen = torch.as_tensor(obs, dtype=torch.float64)[:, :1].expand(-1, obs.shape[1], -1)  # a heading that never turns
    stuck = quality.physics_residual(frozen, actions, lambda o, a: RevisitRoom.observable_step(c, o, a))
    assert stuck[:, 1:].mean() > 0.1


def test_the_pendulum_step_is_mujocos():
    """The pendulum's observable_step reproduces its recorded next states from the recorded ones."""
    from worldkit_plugins.envs.pendulum import Pendulum

    env = Pendulum()
    ep = wk_data.record_episode(env, 3, 12)
    env.close()
    c = Pendulum.Config()
    pred, dims = Pendulum.observable_step(c, ep.states[:-1], ep.actions[1:])
    assert dims == [0, 1, 2]
    np.testing.assert_allclose(pred, ep.states[1:], atol=1e-4)
    wrong, _ = Pendulum.observable_step(c, ep.states[:-1], -ep.actions[1:])  # the other torque
    assert np.abs(wrong[:, 2] - ep.states[1:, 2]).max() > 0.05


def test_the_recall_table_ranks_trivial_baselines_with_the_models_and_pairs_rows_by_episode(tmp_path):
    """recall_report.markdown: bold is the best recall per bucket among the models and the trivial
    baselines (persistence beats both models at the short gap, so it is bold there, not a model); the
    truth is a reference, never bold; with a reference row, every other row's paired difference per
    bucket, starred beyond two standard errors. plot writes the figure."""
    from worldkit import recall_report

    def rec(per_episode, refs=True):
        per = np.asarray(per_episode, dtype=float)
        stats = {"model": [(float(per[:, k].mean()), float(per[:, k].std(ddof=1) / np.sqrt(len(per)))) for k in range(2)]}
        alarms = {"model": (0.1, 0.05)}
        if refs:
            stats.update(truth=[(1.0, 0.0)] * 2, persistence=[(0.9, 0.05), (0.2, 0.05)], mean_frame=[(0.0, 0.0)] * 2)
            alarms.update(truth=(0.0, 0.0), persistence=(1.0, 0.0), mean_frame=(0.0, 0.0))
        return {"buckets": ["4 (1-5)", "8 (6-11)"], "gaps": [4, 8], "returns": [10, 12],
                "per_episode": {"colour": {"model": per.tolist()}}, "stats": {"colour": stats}, "false_alarm": alarms}

    a = rec([[0.6, 0.9], [0.7, 1.0], [0.5, 0.8], [0.6, 0.9]])
    b = rec([[0.6, 0.1], [0.7, 0.2], [0.5, 0.0], [0.6, 0.1]], refs=False)
    md = recall_report.markdown([("sparse", "persistent_block", a), ("window", "sliding_window", b)], reference="window")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "**0.90 ± 0.05**" in rows["persistence (copy last frame)"]  # a trivial baseline wins the short gap
    assert "**" not in rows["`sparse`"].split("|")[3] and "**0.90" in rows["`sparse`"].split("|")[4]
    assert "**" not in rows["ground truth (ceiling)"]
    diffs = rows["`sparse`"].split("|")[-3:-1]
    assert diffs[0].strip() == "+0.00 ± 0.00" and diffs[1].strip() == "+0.80 ± 0.00*"
    assert rows["`window`"].split("|")[-2].strip() == ""  # the reference is not compared with itself
    recall_report.plot([("sparse", "persistent_block", a)], tmp_path / "recall.png")
    assert (tmp_path / "recall.png").stat().st_size > 0
