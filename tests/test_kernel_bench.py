"""The GPU kernel benchmark on the CPU at small sizes: its problems, block lists, FLOP counts, the
correctness gate, and the headline run end to end through the same code (Triton under the interpreter)."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # the Triton paths run on the CPU, through the interpreter

import pytest
import torch
import torch.nn.functional as F

from worldkit_kernels import pbsa_attention
from worldkit_kernels.choices import problem_label
from tests.benchmark_scripts import load


@pytest.fixture()
def bench(monkeypatch):
    """The kernelbench package (kernel_bench.py's parts), loaded afresh with kernel_bench, at small shapes."""
    load("kernel_bench")  # puts benchmarks/ on sys.path; kernelbench's modules imported afresh
    import kernelbench.flex
    import kernelbench.tables  # the modules kernel_bench.py does not import itself

    for name, value in dict(TOKENS_PER_FRAME=20, HEADS=2, HEAD_DIM=16, DTYPE=torch.float32).items():
        monkeypatch.setattr(kernelbench.problem, name, value)
    return kernelbench


def test_full_density_lists_are_dense_attention(bench):
    """At density 1 the pool, lists and ragged tail reproduce dense SDPA over the flat keys, and the
    counted pairs equal the dense ones, so speedups and TFLOP/s compare like with like."""
    frames, BLK = 5, 8
    p = bench.problem.make_problem(frames, BLK, torch.float64, "cpu")
    assert p["Tq"] == bench.problem.CHUNK_FRAMES * 20 and p["Tq"] % BLK  # a ragged chunk tail
    index, count, K = bench.problem.make_lists(1, 2, p["NSc"], p["NQB"], 1.0, "cpu")
    assert K == p["NSc"] + p["NQB"]
    assert bench.problem.computed_pairs(index, count, p["block_len"], p["Tq"], BLK) == 2 * p["Tq"] * p["Lk"]
    out = pbsa_attention(p["q"], p["kp"], p["vp"], index, count, p["block_len"], impl="torch")
    ref = F.scaled_dot_product_attention(p["q"], p["k"], p["v"])
    assert torch.allclose(out, ref, atol=1e-10)


def test_sparse_lists_keep_persistent_and_own_blocks(bench):
    NSc, NQB = 30, 4
    index, count, K = bench.problem.make_lists(2, 3, NSc, NQB, 0.25, "cpu", seed=1)
    assert K == round(0.25 * (NSc + NQB)) and bool((count == K).all())
    n_p = K // 2
    assert torch.equal(index[..., :n_p], torch.arange(n_p, dtype=torch.int32).expand(2, 3, NQB, n_p))
    for r in range(NQB):
        assert bool((index[:, :, r] == NSc + r).any(-1).all())  # own block in every row
    assert bool((index[..., 1:] > index[..., :-1]).all())  # sorted, no duplicates


def test_gate_is_flash_attentions_rule():
    """Error against fp64 at most 2x SDPA's (same dtype) plus 2^-10 of the largest reference value; a
    NaN fails; every tensor is judged and named."""
    kb = load("kernel_bench")
    ref = {"out": torch.full((4,), 1.0, dtype=torch.float64), "dq": torch.full((4,), 2.0, dtype=torch.float64)}
    sdpa = {key: r + 1e-2 for key, r in ref.items()}
    floor = {"out": 2**-10, "dq": 2 * 2**-10}
    ok, line = kb.checks.gate("PBSA", {key: r + 2e-2 + 0.9 * floor[key] for key, r in ref.items()}, sdpa, ref)
    assert ok and line.startswith("PBSA: out 2.") and "dq" in line and "FAIL" not in line
    ok, line = kb.checks.gate("PBSA", {"out": ref["out"] + 2e-2 + 1.1 * floor["out"], "dq": ref["dq"]}, sdpa, ref)
    assert not ok and "out" in line and line.count("FAIL") == 1
    ok, _ = kb.checks.gate("PBSA", {"out": ref["out"] * float("nan"), "dq": ref["dq"]}, sdpa, ref)
    assert not ok


def test_untuned_restores_the_environment(bench, monkeypatch):
    import os

    monkeypatch.setenv("WORLDKIT_PBSA_TUNE", "1")
    with bench.measure.untuned():
        assert os.environ["WORLDKIT_PBSA_TUNE"] == "0"
    assert os.environ["WORLDKIT_PBSA_TUNE"] == "1"
    monkeypatch.delenv("WORLDKIT_PBSA_TUNE")
    with bench.measure.untuned():
        pass
    assert "WORLDKIT_PBSA_TUNE" not in os.environ


def test_table_speedups_against_flash_of_the_same_problem(bench):
    rows = [(21, 100, 128, 1.0, "sdpa-flash", (2.0, 6.0), 1000), (21, 100, 128, 1.0, "sdpa-cudnn", (1.0, "n/a (x)"), 1000),
            (21, 100, 128, 0.25, "pbsa kernel", (0.5, 3.0), 250), (21, 100, 128, 0.25, "pbsa + Triton selection", (0.25, "-"), 250),
            (21, 100, 128, 0.25, "flex", "n/a (boom)", 250)]
    md = bench.tables.table(rows)
    assert "| 0.500 ms, 0 TF/s, 4.00x flash, 2.00x cuDNN | 3.000 ms, 0 TF/s, 2.00x flash |" in md  # fwd+bwd: cuDNN n/a
    assert "n/a (boom)" in md and "| 0.250 ms, 0 TF/s, 8.00x flash, 4.00x cuDNN | - |" in md
    lines = bench.tables.targets(rows).splitlines()
    assert lines[0] == ("- 25 %, pbsa + Triton selection: 0.250 ms, 8.00x SDPA-flash (2.000 ms) (target >= 4.5x: met), "
                        "4.00x cuDNN (1.000 ms) (target >= 2.7x: met)")
    assert lines[1] == "- 25 %, pbsa + PyTorch selection: not measured"
    assert lines[2] == "- 25 %, pbsa kernel: 0.500 ms, 4.00x SDPA-flash (2.000 ms), 2.00x cuDNN (1.000 ms)"
    assert lines[3] == "- full density, pbsa kernel against cuDNN: not measured"
    rows.append((21, 100, 128, 1.0, "pbsa kernel", (1.2, 5.0), 1000))
    assert bench.tables.targets(rows).splitlines()[3] == ("- full density, pbsa kernel: 1.200 ms, 1.20x cuDNN's time (1.000 ms; "
                                                          "target <= 1.1x: MISSED)")


def test_a_stopped_benchmark_keeps_its_rows(bench, monkeypatch):
    """``timeout`` sends SIGTERM: the rows measured so far come back (to be written, marked partial), even
    when the signal lands inside a baseline's ``except Exception`` (where the timings spend their time)."""
    import os
    import signal

    def fake(frames, blocks, densities, rows, **kw):
        rows.append((21, 100, 128, 1.0, "sdpa-flash", (1.0, 2.0), 10))
        try:  # as bench() and the launch tuner do around each measurement
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception:
            rows.append("swallowed")
        rows.append("never reached")

    monkeypatch.setattr(bench.timing, "run_timings", fake)
    before = signal.getsignal(signal.SIGTERM)
    with bench.timing.sigterm_stops():
        rows, stopped = bench.timing.timings_until_stopped([21], [128], [1.0])
    assert "SIGTERM" in stopped and rows == [(21, 100, 128, 1.0, "sdpa-flash", (1.0, 2.0), 10)]
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(bench.timing, "run_timings", lambda f, b, d, rows, **kw: rows.append("row"))
    assert bench.timing.timings_until_stopped([21], [128], [1.0]) == (["row"], None)


def test_report_lists_every_timed_candidate(bench, monkeypatch, capsys):
    """The report shows the tuner's choice per problem class and every candidate it timed, fastest first
    (the figures a next tuning round starts from)."""
    import argparse

    from worldkit_kernels.pbsa_triton import tuner

    rows = [(21, 100, 128, 1.0, "sdpa-flash", (2.0, 6.0), 1000), (21, 100, 128, 0.25, "pbsa kernel", (0.5, 3.0), 250)]
    monkeypatch.setattr(bench.results, "timings_until_stopped", lambda f, b, d, **kw: (rows, None))
    monkeypatch.setattr(bench.results, "selection_timings", lambda f, b, r: "| selection |")
    key = ("fwd", 128, 128, torch.bfloat16, True, 32, 64, 512, 16, False, True, "NVIDIA H100")
    fast, slow = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, SPLIT=2), dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    monkeypatch.setattr(tuner, "_tuned", {key: fast})
    monkeypatch.setattr(tuner, "_timings", {key: [(slow, 0.9), (fast, 0.4), (slow | dict(num_stages=2), float("inf"))]})
    from worldkit_kernels import topk_triton

    sel = ("cuda:0", torch.bfloat16, 1, 12, False, 37, 512, 128, True, torch.bfloat16)
    failed = ("cuda:0", torch.bfloat16, 1, 12, True, 37, 1024, 128, False, torch.float32)  # fp32 pooled keys
    monkeypatch.setattr(topk_triton, "_choice_timings", {sel: {"torch": 0.75, "triton": 0.05},
                                                         failed: {"torch": 0.8, "triton": float("inf")}})
    monkeypatch.setattr(topk_triton, "_choice", {sel: "triton", failed: "torch"})
    monkeypatch.setattr(topk_triton, "_choice_failures", {failed: "RuntimeError: no kernel"})
    args = argparse.Namespace(write=False, out=None, backward=True, flex_autotune=False, profile=False)
    assert bench.results.report(args, [21], [128], [0.25], "card, versions", 0.0) == 0
    out = capsys.readouterr().out
    assert ("- 1 x 12 heads, 37 query blocks, up to 512 candidates, head dim 128, own block forced, bfloat16 on cuda:0: "
            "torch 0.750, triton 0.050; keeps triton\n") in out
    assert ("- 1 x 12 heads (one shared list), 37 query blocks, up to 1024 candidates, head dim 128, "
            "bfloat16/float32 on cuda:0: "
            "torch 0.800, triton inf; keeps torch (RuntimeError: no kernel)") in out
    assert ("- fwd BLK=128 D=128 bfloat16 per-head NQB<=32 K<=64 NS<=512 BH<=16 query-tail on NVIDIA H100: "
            "M128 N64 w8 s3 x2 0.400; M64 N64 w4 s3 0.900; M64 N64 w4 s2 inf") in out
    assert "- fwd BLK=128 D=128 bfloat16 per-head NQB<=32 K<=64 NS<=512 BH<=16 query-tail on NVIDIA H100: M128 N64 w8 s3 x2\n" in out
    tail = ("dq", 64, 32, torch.float16, False, 8, 16, 64, 2, False, False, "NVIDIA H100")  # short last query block, lengths
    assert problem_label(tail) == "dq BLK=64 D=32 float16 shared NQB<=8 K<=16 NS<=64 BH<=2 query-tail ragged on NVIDIA H100"
    assert "| selection |" in out and "0.500 ms" in out


def test_profile_lists_the_operators_of_one_step(bench, monkeypatch):
    """The kernel-by-kernel profile of PBSA forward + backward (here the PyTorch path on the CPU):
    a table whose rows carry positive times and whose shares are of the step's total."""
    monkeypatch.setattr(bench.problem, "DEVICE", "cpu")
    md = bench.profiling.profile(frames=6, BLK=16, density=0.5, impl="torch", steps=2)
    lines = md.splitlines()
    assert lines[0].startswith("| kernel (CPU self time)") and lines[-1].startswith("| all |")
    rows = [line.split("|")[1:4] for line in lines[2:-1]]
    assert rows and all(float(ms) > 0 for _, ms, _ in rows)
    assert float(lines[-1].split("|")[2]) >= max(float(ms) for _, ms, _ in rows)


def test_flex_options_divide_the_block(bench):
    """Flex runs its own tiles at blocks of 128; at smaller blocks every option set tried first names
    tiles that divide the block, so the BlockMask's blocks map onto whole tiles."""
    assert bench.flex.flex_options(128) == [None]
    sets = bench.flex.flex_options(64)
    assert sets[-1] is None and len(sets) > 2
    for opts in sets[:-1]:
        tiles = [v for k, v in opts.items() if "BLOCK" in k]
        assert tiles and all(64 % t == 0 for t in tiles)


def test_short_error_is_one_line(bench):
    e = ValueError("Q and KV block size\n  must be divisible   by BLOCK_M")
    assert bench.measure.short_error(e) == "ValueError: Q and KV block size must be divisible by BLOCK_M"
    assert bench.measure.short_error(e, 10) == "ValueError: Q and KV b"
    assert bench.measure.short_error(RuntimeError()) == "RuntimeError: "


def test_launch_cost_times_issue_and_completion(bench, monkeypatch):
    """The CPU-cost table: per pass, the time to issue a call and the time with the device waited for
    (on the CPU they are one and the same work, so the second is never the smaller)."""
    monkeypatch.setattr(bench.problem, "DEVICE", "cpu")
    md = bench.profiling.launch_cost(frames=6, BLK=16, density=0.5, impl="torch", n=3)
    rows = [line.split("|")[1:4] for line in md.splitlines()[2:]]
    assert [r[0].strip() for r in rows] == ["forward", "forward + backward"]
    for _, issued, done in rows:
        assert 0 < float(issued) <= float(done)
    assert float(rows[1][1]) > float(rows[0][1])  # the backward adds work


def test_selection_timings_check_the_fused_kernel_first(bench, monkeypatch):
    """The selection table times the PyTorch selection and the fused Triton top-K (after checking it picks
    the same lists), says which ``auto`` keeps, beside PBSA's forward from the timing rows."""
    pytest.importorskip("triton")
    monkeypatch.setattr(bench.problem, "DEVICE", "cpu")
    timed = []
    monkeypatch.setattr(bench.measure, "bench", lambda fn: (fn(), timed.append(fn), 0.5)[-1])
    rows = [(6, 0, 16, 0.25, "pbsa kernel", (0.25, 1.0), 10)]
    md = bench.timing.selection_timings([6], [16], rows)
    cells = [c.strip() for c in md.splitlines()[2].split("|")[1:-1]]
    assert cells[:2] == ["6", "16"] and int(cells[3]) == max(1, round(0.25 * int(cells[2])))
    # selection twice, what auto keeps (PyTorch off CUDA), lists twice, forward
    assert cells[4:] == ["0.500", "0.500", "torch", "0.500 / 0.500", "0.250"], cells
    assert len(timed) == 4


def test_flex_options_prefer_a_set_whose_backward_compiles(bench, capsys):
    """Flex's options: the first set that compiles forward and backward; failing that, the first whose
    forward compiles (its forward is still timed); None when no forward compiles. Each failure is said."""
    sets = bench.flex.flex_options(64)
    x, dout = torch.ones(2, requires_grad=True), torch.ones(2)

    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("no backward")

    def flex(fails_fwd, fails_bwd):
        def run(opts):
            i = sets.index(opts)
            if i in fails_fwd:
                raise ValueError(f"no forward for set {i}")
            return NoBackward.apply(x) if i in fails_bwd else x * 2
        return run

    assert bench.flex.pick_flex_options(flex({0}, {1}), dout, 64) == (sets[2],)  # 0: no forward, 1: no backward
    assert bench.flex.pick_flex_options(flex(set(), set(range(len(sets)))), dout, 64) == (sets[0],)
    assert bench.flex.pick_flex_options(flex(set(range(len(sets))), set()), dout, 64) is None
    out = capsys.readouterr().out
    assert "the forward fails: ValueError: no forward for set 0" in out
    assert "the backward fails: RuntimeError: no backward" in out


def test_helper_kernels_checked_against_pytorch(bench, monkeypatch):
    """The device check of the small kernels (here under the interpreter): all pass as they are; a wrong
    transposed list fails the helpers, a wrong selection only the selection."""
    pytest.importorskip("triton")
    from worldkit_kernels import topk_triton
    from worldkit_kernels.pbsa_triton import lists

    monkeypatch.setattr(bench.problem, "DEVICE", "cpu")
    small = dict(NSc=5, NQB=3, candidates=(20,))
    assert bench.checks.helpers_correct(**small) == (True, True)
    real = lists._transposed
    monkeypatch.setattr(lists, "_transposed", lambda i, c, n: tuple(t.flip(-1) for t in real(i, c, n)))
    assert bench.checks.helpers_correct(**small) == (False, True)
    monkeypatch.setattr(lists, "_transposed", real)
    fused = topk_triton.topk_blocks_triton
    monkeypatch.setattr(topk_triton, "topk_blocks_triton", lambda *a, **k: (fused(*a, **k)[0].flip(-1), fused(*a, **k)[1]))
    assert bench.checks.helpers_correct(**small) == (True, False)


def test_headline_on_the_cpu(tmp_path, monkeypatch):
    """--tiny --headline: the GPU session's kernel phase end to end at toy sizes (Triton under the
    interpreter, eager Flex): every problem gated, every method a row, the targets and the file written."""
    pytest.importorskip("triton")
    monkeypatch.setenv("WORLDKIT_COMMIT", "abc123")
    kb = load("kernel_bench")
    out = tmp_path / "kernels.md"
    assert kb.main(["--tiny", "--headline", "--profile", "--out", str(out)]) == 0
    md = out.read_text()
    assert "commit abc123" in md and "Partial" not in md
    methods = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 7 and cells[0] == "6":
            methods[cells[4], cells[3]] = cells[5]
    assert set(methods) == {("sdpa-flash", "1.000"), ("sdpa-cudnn", "1.000"), ("pbsa kernel", "1.000"),
                            ("pbsa kernel", "0.250"), ("pbsa + Triton selection", "0.250"),
                            ("pbsa + PyTorch selection", "0.250"), ("flex", "1.000"), ("flex", "0.250"),
                            ("flex max-autotune", "1.000"), ("flex max-autotune", "0.250")}
    for (name, _), cell in methods.items():
        assert name == "sdpa-cudnn" or " ms, " in cell, (name, cell)  # no cuDNN on the CPU; the rest measured
    assert "- 25 %, pbsa + Triton selection: " in md and "SDPA-flash" in md
    assert "PBSA forward with the fused block selection, kernel by kernel" in md and "The CPU cost of issuing" in md
    assert "forward + backward |" not in md  # forward only: no backward compiled for the profile


def test_a_wrong_kernel_output_stops_the_timings(monkeypatch, capsys):
    """The gate on the tuned kernel as timed: an output off by 1 % of its range fails it, nothing is
    timed, and the run exits 1."""
    kb = load("kernel_bench")
    real = kb.timing.pbsa_attention

    def off(*a, **k):
        out = real(*a, **k)
        return out + 0.01 * out.detach().abs().max()

    monkeypatch.setattr(kb.timing, "pbsa_attention", off)
    timed = []
    monkeypatch.setattr(kb.measure, "timed", lambda *a: timed.append(a) or (1.0, "-"))
    assert kb.main(["--tiny", "--headline"]) == 1
    out = capsys.readouterr().out
    assert "GATE FAILED" in out and "FAIL" in out.split("gate F=6 BLK=16 d=1.000: PBSA:")[1].splitlines()[0]
    assert timed == []
