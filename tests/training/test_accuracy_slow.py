"""Long runs on the real sets that check pawnet's accuracy claims (`make test-slow`)."""

import pytest
from helpers import CDFILTERED, CVTRICKS, TONGPYTHON

import pawnet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return pawnet.train(CDFILTERED, out=str(tmp_path_factory.mktemp("acc") / "default"))


@pytest.mark.parametrize("held_out", [CVTRICKS, TONGPYTHON], ids=["cvtricks", "tongpython"])
def test_default_from_scratch_model_beats_the_tutorials(default_run, held_out):
    report = pawnet.evaluate(default_run, held_out, split="test")
    assert report.accuracy >= 0.88


def test_tutorial_a_with_its_own_settings_learns(tmp_path):
    run = pawnet.train(CDFILTERED, model="tutorial-a-cnn", augment=["flip", "zoom", "shear"],
                       out=str(tmp_path / "tutorial-a"))
    report = pawnet.evaluate(run, CVTRICKS, split="test")
    assert report.accuracy >= 0.65
