"""The parts of ``benchmarks/kernel_bench.py`` (its command line), one concern a module:

- ``problem``: the shapes, device and dtype, and the problems and block lists built from them;
- ``measure``: how a call is timed (``bench``, ``timed``), PBSA untuned, errors as one line;
- ``checks``: the device checks against fp64 and PyTorch, and the gate each timed problem passes first;
- ``flex``: FlexAttention on the same blocks (its kernel options, gated, timed);
- ``timing``: the timing rows of every method, the block selection's table, stopping on SIGTERM;
- ``profiling``: PBSA kernel by kernel, and the CPU cost of issuing a call;
- ``tables``: the rows as text and markdown, and the issue's targets;
- ``results``: all of it after the checks, printed and written as a RESULTS.md section.

The settings in ``problem`` (and ``measure.bench``, ``profiling``'s counts) are read when called, so
``kernel_bench.tiny()`` and the tests can change them. Importing the package makes ``worldkit_kernels``
importable from a bare checkout (no ``pip install -e .``).
"""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("worldkit_kernels") is None:  # a bare checkout: load kernels/ under its package name
    spec = importlib.util.spec_from_file_location(
        "worldkit_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["worldkit_kernels"] = module
    spec.loader.exec_module(module)
