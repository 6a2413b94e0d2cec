import logging

from helpers import invoke

from pawnet import logs


def test_the_console_writes_one_line_per_record_to_the_stream_of_its_logger(capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # no application logging
    with logs.verbosity(True):
        logging.getLogger("pawnet.training").info("Saved bundle to a\nb")
        logging.getLogger("pawnet.training").warning("few photos")
        logging.getLogger("pawnet.inference.runtimes").info("Converting the model")
    out, err = capsys.readouterr()
    assert out == "Saved bundle to a\\nb\nwarning: few photos\n"
    assert err == "Converting the model\n"
    assert logging.getLogger("pawnet").handlers == []  # removed with its block


def test_not_verbose_shows_warnings_only(capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    with logs.verbosity(False):
        assert not logs.shown()
        logging.getLogger("pawnet.training").info("Using train 10")
        logging.getLogger("pawnet.training").warning("few photos")
    assert capsys.readouterr().out == "warning: few photos\n"


def test_an_applications_own_logging_decides_where_the_lines_go(caplog, capsys):
    with logs.verbosity(True):  # pytest's handler on the root logger stands for the app's
        logging.getLogger("pawnet.training").info("Using train 10")
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == ["Using train 10"]


def test_the_cli_shows_lines_for_its_command_only():
    result = invoke("runs", "/nonexistent-runs")
    assert result.exit_code == 2
    assert logging.getLogger("pawnet").handlers == []
    assert logging.getLogger("pawnet").level == logging.NOTSET
