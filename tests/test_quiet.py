import contextlib

import pytest

from pawnet import quiet


@pytest.mark.parametrize("verbose", [False, True])
def test_start_up_lines_show_with_verbose_or_when_the_import_fails(tmp_path, monkeypatch,
                                                                   capfd, verbose):
    noisy, broken = f"noisy_{verbose}", f"broken_{verbose}"  # a module imports once
    (tmp_path / f"{noisy}.py").write_text("import os\nos.write(2, b'I0000 chatter\\n')\n")
    (tmp_path / f"{broken}.py").write_text("import os\nos.write(2, b'I0000 why\\n')\n1 / 0\n")
    monkeypatch.syspath_prepend(tmp_path)
    with quiet.native_logs_shown(verbose):
        quiet.import_quietly(noisy)
        assert capfd.readouterr().err == ("I0000 chatter\n" if verbose else "")
        with pytest.raises(ZeroDivisionError):
            quiet.import_quietly(broken)
    assert capfd.readouterr().err == "I0000 why\n"


def test_the_shown_native_lines_end_with_their_block():
    with quiet.native_logs_shown():
        assert isinstance(quiet.held(), type(contextlib.nullcontext()))
    assert not isinstance(quiet.held(), type(contextlib.nullcontext()))
