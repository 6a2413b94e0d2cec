"""From-scratch CNNs: the four tutorials' architectures, by name, and pawnet's own default.

The tutorials pawnet grew from, and the architectures they teach:

- Tutorial A: Keras' first CNN on TensorFlow's `cats_and_dogs_filtered` (150 px, binary).
- Tutorial B: Kaggle's Dogs vs. Cats flat files through tf.data, VGG16 from scratch.
- Tutorial C: a small network in low-level TensorFlow ops, any number of class folders.
- Tutorial D: three small CNNs on Microsoft's PetImages, compared step by step.

Every model takes raw 0-255 RGB pixels; rescaling is its first layer, so nobody can forget it.
A new architecture is a builder `(num_classes, image_size) -> keras.Model` plus one row in
`MODELS`; `pawnet models` and the tests walk the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pawnet.models.spec import ModelSpec, classifier_head

if TYPE_CHECKING:
    import keras


def _inputs(image_size: int):
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    return inputs, layers.Rescaling(1.0 / 255, name="rescale")(inputs)


def tutorial_a_cnn(num_classes: int, image_size: int) -> keras.Model:
    import keras
    from keras import layers

    inputs, x = _inputs(image_size)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="tutorial_a_cnn")


def tutorial_b_vgg16(num_classes: int, image_size: int) -> keras.Model:
    import keras
    from keras import layers

    inputs, x = _inputs(image_size)
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(100, activation="relu")(x)
    x = layers.Dense(100, activation="relu")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="tutorial_b_vgg16")


def tutorial_c_3conv(num_classes: int, image_size: int) -> keras.Model:
    import keras
    from keras import layers

    weights = keras.initializers.TruncatedNormal(stddev=0.05)
    bias = keras.initializers.Constant(0.05)
    inputs, x = _inputs(image_size)
    for filters in (32, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=weights,
                          bias_initializer=bias)(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu", kernel_initializer=weights,
                     bias_initializer=bias)(x)
    return keras.Model(inputs, classifier_head(x, num_classes, softmax=True),
                       name="tutorial_c_3conv")


def _tutorial_d(name: str, filters: tuple[int, ...], num_classes: int, image_size: int):
    import keras
    from keras import layers

    inputs, x = _inputs(image_size)
    for f in filters:
        x = layers.Conv2D(f, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, classifier_head(x, num_classes, softmax=True), name=name)


def tutorial_d_conv16(num_classes: int, image_size: int) -> keras.Model:

    return _tutorial_d("tutorial_d_conv16", (16,), num_classes, image_size)


def tutorial_d_conv32(num_classes: int, image_size: int) -> keras.Model:

    return _tutorial_d("tutorial_d_conv32", (32,), num_classes, image_size)


def tutorial_d_2conv(num_classes: int, image_size: int) -> keras.Model:

    return _tutorial_d("tutorial_d_2conv", (16, 32), num_classes, image_size)


def _replicated() -> bool:
    """Whether the model is being built for several replicas (in a tf.distribute scope)."""
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1


def _conv_bn(x, filters: int, stride: int = 1):
    from keras import layers

    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    # on several replicas: the global batch's statistics, the same moving averages on each
    x = layers.BatchNormalization(synchronized=_replicated())(x)
    return layers.ReLU()(x)


def _residual(x, filters: int):
    from keras import layers

    return layers.add([x, _conv_bn(_conv_bn(x, filters), filters)])


def pawnet_cnn(num_classes: int, image_size: int) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = _conv_bn(x, 16, stride=2)
    x = _conv_bn(x, 32)
    x = layers.MaxPooling2D(2)(x)
    for filters in (64, 128, 256):
        x = _conv_bn(x, filters)
        x = layers.MaxPooling2D(2)(x)
        x = _residual(x, filters)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="pawnet_cnn")


_D = {"image_size": 224, "lr": 1e-3, "epochs": 10, "batch_size": 64}
MODELS = (
    ModelSpec("tutorial-a-cnn", tutorial_a_cnn,
              "Tutorial A (Keras, cats_and_dogs_filtered): 3x Conv 32/64/128 + max-pool, "
              "Dense 512, dropout, sigmoid", image_size=150, lr=1e-3, epochs=10, batch_size=32),
    ModelSpec("tutorial-b-vgg16", tutorial_b_vgg16,
              "Tutorial B (Kaggle flat files, tf.data): VGG16 from scratch with its two "
              "4096-unit dense layers cut to 100", image_size=224, lr=1e-5, epochs=15,
              batch_size=32),
    ModelSpec("tutorial-c-3conv", tutorial_c_3conv,
              "Tutorial C (low-level TF ops, any n folders): 3 conv + max-pool + ReLU "
              "(32/32/64), FC 128, softmax per class", image_size=128, lr=1e-4, epochs=20,
              batch_size=16),
    ModelSpec("tutorial-d-conv16", tutorial_d_conv16, "Tutorial D (PetImages) model 1: one "
              "Conv 16 + max-pool, Dense 128, softmax", **_D),
    ModelSpec("tutorial-d-conv32", tutorial_d_conv32, "Tutorial D (PetImages) model 2: one "
              "Conv 32 + max-pool, Dense 128, softmax", **_D),
    ModelSpec("tutorial-d-2conv", tutorial_d_2conv, "Tutorial D (PetImages) model 3: Conv 16 "
              "and Conv 32, each + max-pool, Dense 128, softmax", **_D),
    ModelSpec("pawnet-cnn", pawnet_cnn,
              "pawnet's from-scratch default: small ResNet-style CNN (batch norm, residual "
              "blocks, global pooling, dropout) at 96 px with crop+flip, AdamW, label "
              "smoothing", image_size=96, lr=2e-3, epochs=40, batch_size=64,
              recipe={"weight_decay": 0.05, "label_smoothing": 0.1, "augment": ["crop", "flip"]}),
)
