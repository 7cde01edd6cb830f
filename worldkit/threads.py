"""CPU threads for torch, chosen so that a run shares the machine gracefully.

torch's CPU operations run on an OpenMP team, one thread per core by default. While a thread waits for
the others at the end of an operation it spins (OpenMP's default wait policy). When another process
holds one of the cores, the team's thread there is descheduled in the middle of an operation and the
others spin until it comes back: on a 2-core machine shared with other CPU-bound jobs, two threads
trained the self-forcing pendulum job at 0.02 steps/s under the default policy and at 0.8-1.0 under
``OMP_WAIT_POLICY=PASSIVE``, where waiting threads sleep and hand the core back
(``benchmarks/thread_bench.py`` measures thread counts and policies, on idle cores and beside a busy one).

``configure()``, which the ``worldkit`` command calls before torch is imported, sets
``OMP_WAIT_POLICY=PASSIVE`` unless the environment already says a policy. The knobs, as environment
variables: ``OMP_WAIT_POLICY`` (``ACTIVE``, or any other value, is left as given) and ``OMP_NUM_THREADS``
(the team size; torch's default is the number of cores). Data-generation and multi-device workers
inherit both.
"""
from __future__ import annotations

import os
import sys

POLICY_VAR = "OMP_WAIT_POLICY"
DEFAULT_POLICY = "PASSIVE"


def configure(environ=os.environ) -> dict[str, str]:
    """Set the wait policy where the environment leaves it open; returns what was set. It takes effect
    only if torch (its OpenMP runtime) is not loaded yet: the runtime reads it once, when it starts."""
    if environ.get(POLICY_VAR):
        return {}
    environ[POLICY_VAR] = DEFAULT_POLICY
    return {POLICY_VAR: DEFAULT_POLICY}


def effective() -> bool:
    """Whether a wait policy set now still reaches torch's OpenMP runtime (torch not imported yet)."""
    return "torch" not in sys.modules
