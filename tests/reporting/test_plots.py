"""pawnet's pictures leave matplotlib as they found it: the user's backend, no pyplot."""

import subprocess
import sys
import textwrap

import pytest

from pawnet.reporting.plots import is_own_png


@pytest.mark.integration
def test_importing_and_drawing_keep_the_users_backend(tmp_path):
    # before: importing pawnet.reporting.plots switched matplotlib to Agg, so a notebook's
    # figures stopped showing after `pawnet.evaluate`
    code = textwrap.dedent(f"""
        import sys
        import matplotlib
        import numpy as np

        matplotlib.use("svg")
        from pawnet.reporting import plots

        plots.plot_confusion(np.array([[3, 1], [0, 4]]), ["cat", "dog"], r"{tmp_path}/c.png")
        plots.plot_grid(np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"], r"{tmp_path}/g.png")
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all(is_own_png((tmp_path / name).read_bytes()) for name in ("c.png", "g.png"))
