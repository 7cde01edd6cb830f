"""The FlexAttention baseline on a BlockMask of PBSA's very blocks: which kernel options compile, and
its rows, gated like PBSA, then timed."""
from __future__ import annotations

import torch

from . import measure, problem
from .checks import gate, outputs
from .measure import short_error

def flex_options(BLK):
    """FlexAttention kernel_options to try, in order: its defaults suit blocks of 128; a smaller block
    needs tiles that divide it, forward and backward, with warps and stages to match."""
    if BLK >= 128:
        return [None]
    m = min(BLK, 64)
    small = dict(BLOCK_M=m, BLOCK_N=m, num_warps=4, num_stages=3)
    return [
        {**{f"fwd_{k}": v for k, v in small.items()},
         **{f"bwd_{k}": v for k, v in dict(BLOCK_M1=m // 2, BLOCK_N1=m, BLOCK_M2=m, BLOCK_N2=m // 2,
                                             num_warps=4, num_stages=3).items()}},
        small,
        {"fwd_BLOCK_M": m, "fwd_BLOCK_N": m},
        None,
    ]


def pick_flex_options(run, dout, BLK):
    """The first of ``flex_options(BLK)`` whose forward and (given ``dout``) backward both compile
    (``run(opts)`` returns Flex's output), else the first whose forward does: ``(opts,)``, or None when no
    forward compiles. Each failure is printed once, with its reason."""
    forward_only = None
    for opts in flex_options(BLK):
        try:
            with torch.no_grad():
                run(opts)
        except Exception as e:
            print(f"  Flex with kernel_options={opts}: the forward fails: {short_error(e, 400)}")
            continue
        forward_only = forward_only or (opts,)
        if dout is None:
            return forward_only
        try:
            run(opts).backward(dout)
            return (opts,)
        except Exception as e:
            print(f"  Flex with kernel_options={opts}: the backward fails: {short_error(e, 400)}")
    return forward_only


def flex_compiled(mode=None):
    """FlexAttention compiled for the device (``mode``: torch.compile's), eager on the CPU (--tiny), or
    "n/a (reason)"."""
    try:
        from torch.nn.attention.flex_attention import flex_attention

        if problem.DEVICE == "cpu":
            return flex_attention
        torch._dynamo.config.cache_size_limit = 64  # one compile per shape; never fall back to eager Flex
        return torch.compile(flex_attention, dynamic=False, mode=mode)
    except Exception as e:
        return f"n/a ({short_error(e)})"


def flex_row(flex, p, index, count, K, dout, ref, base, flex_choice, name):
    """Flex on a BlockMask of the same blocks, each a full block (the compiled kernels never evaluate the
    mask_mod, which says the same for eager Flex, whose result comes from it alone): gated like PBSA
    (output; gradients with ``dout``), then timed; "n/a (reason)" when it fails to compile or the gate."""
    from torch.nn.attention.flex_attention import BlockMask

    q, k, v, BLK, Lk = p["q"], p["k"], p["v"], p["kp"].shape[3], p["Lk"]
    if dout is None:  # forward only: no graph (eager Flex on the CPU refuses inputs that require grad)
        q, k, v = q.detach(), k.detach(), v.detach()
    try:
        kv_index = torch.zeros(1, problem.HEADS, p["NQB"], p["NSc"] + p["NQB"], dtype=torch.int32, device=q.device)
        kv_index[..., :K] = index
        listed = torch.zeros(kv_index.shape, dtype=torch.bool, device=q.device).scatter_(3, index.long(), True)

        def same_blocks(b, h, q_idx, kv_idx):  # what the blocks say, for whoever reads the mask (eager Flex)
            return listed[b, h, q_idx // BLK, kv_idx // BLK]

        mask = BlockMask.from_kv_blocks(torch.zeros_like(count), torch.zeros_like(kv_index), count, kv_index,
                                        BLOCK_SIZE=BLK, mask_mod=same_blocks, seq_lengths=(p["Tq"], Lk))
        if BLK not in flex_choice:  # per block size (the shapes recompile; the options do not change)
            choice = pick_flex_options(lambda opts: flex(q, k, v, block_mask=mask, kernel_options=opts), dout, BLK)
            if choice is None:  # not kept: the next problem tries again
                raise RuntimeError("no kernel_options tried compiles Flex's forward")
            flex_choice[BLK] = choice

        def fx(opts=flex_choice[BLK][0]):
            return flex(q, k, v, block_mask=mask, kernel_options=opts)

        keys = ref.keys() if dout is not None else ["out"]
        ok, line = gate(name, outputs(fx, [q, k, v], dout, Lk), base, {key: ref[key] for key in keys})
        print(f"  gate F={p['frames']} BLK={BLK} d={K / (p['NSc'] + p['NQB']):.3f}: {line}")
        return measure.timed(fx, [q, k, v], dout) if ok else f"n/a (fails the gate: {line})"
    except Exception as e:
        return f"n/a ({short_error(e)})"
