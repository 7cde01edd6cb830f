"""The test session's own rules (tests/conftest.py): a Triton test that skips on Linux is a failure."""
import sys
from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rule holds on Linux")
def test_a_silently_skipped_triton_test_fails_on_linux(pytester):
    pytester.makeconftest(CONFTEST.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile("""
        import pytest

        @pytest.mark.skipif(True, reason="Triton interpreter not available")
        def test_marked():
            pass

        def test_importorskip():
            pytest.importorskip("triton_that_is_not_installed_anywhere")

        def test_no_compiler():
            pytest.skip("Triton cannot compile for sm_90 here (no ptxas)")

        def test_other_reason():
            pytest.skip("needs a GPU")
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1, skipped=2)  # a skip mark fails in setup: an error
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*a Triton test skipped on Linux, where Triton is a dependency*"])


def test_the_interpreter_is_on_before_any_kernel_is_imported():
    import os

    assert os.environ["TRITON_INTERPRET"] == "1"
    from worldkit_kernels.pbsa_triton import forward

    assert type(forward._fwd_kernel).__name__ == "InterpretedFunction"
