"""The Keras MultiWorkerMirroredStrategy shim: applied where needed, and still needed.

`test_keras_still_fails_without_the_shim` fails the day Keras fixes the bugs: then
`pawnet/training/keras_mwms.py` and this file can go (and the shim's version range ends).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest
from helpers import free_ports

from pawnet.training import keras_mwms

WORKER = """
import sys
import keras, numpy as np, tensorflow as tf
from keras.src.backend.tensorflow import trainer
strategy = tf.distribute.MultiWorkerMirroredStrategy()
original = trainer.reduce_per_replica
if sys.argv[1] == "build-fixed":  # the shim's first fix only, to reach the second bug
    from pawnet.training import keras_mwms
    keras_mwms.apply()
    trainer.reduce_per_replica = original
x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
y = (x.sum(axis=1, keepdims=True) > 2).astype("float32")
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
print("FIT FINISHED")
"""

BUGS = {  # what Keras 3.0 to 3.15.1 raise, without each part of the shim
    "none": "Attempt to convert a value (PerReplica",
    "build-fixed": "Invalid reduction dimension 0 for input with 0 dimensions",
}


def test_the_shim_applies_to_the_keras_versions_that_need_it():
    assert keras_mwms.needed("3.15.1") and keras_mwms.needed("3.0.0")
    assert keras_mwms.needed("3.8.0")
    assert not keras_mwms.needed("2.15.0")
    assert not keras_mwms.needed("3.16.0")  # unchecked: this test's failure would tell


@pytest.mark.integration  # two pairs of worker processes
def test_keras_still_fails_without_the_shim():
    if not keras_mwms.needed():
        pytest.skip(f"Keras {keras.__version__} is newer than the shim (checked up to "
                    f"{keras_mwms.CHECKED_UP_TO}): the multi-worker tests check it as it is")
    procs = {}
    ports = free_ports(2 * len(BUGS))
    for n, mode in enumerate(BUGS):
        cluster = [f"127.0.0.1:{p}" for p in ports[2 * n:2 * n + 2]]
        for index in range(2):
            config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
            env = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "3"}
            procs[mode, index] = subprocess.Popen(
                [sys.executable, "-c", WORKER, mode], env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        outputs = {key: proc.communicate(timeout=180)[0] for key, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    for (mode, _), output in outputs.items():
        assert "FIT FINISHED" not in output, (
            f"Keras fixed MultiWorkerMirroredStrategy ({mode}): remove the shim's part")
        assert BUGS[mode] in output, output[-3000:]
