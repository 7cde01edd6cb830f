"""The benchmark scripts, imported by tests: they live in benchmarks/, outside the installed packages."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """A fresh module of ``benchmarks/<name>.py`` (its own module state, whatever was loaded before): the
    modules it imports from benchmarks/ (``kernelbench``'s, ``machine``) are imported afresh with it."""
    for key, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None)).startswith(f"{BENCHMARKS}/"):
            del sys.modules[key]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
