"""Keras CNN template for pushtrain (kind: ``cnn``).

The platform imports this file only inside the training container. It reads two names:

* ``HPARAMS``: one literal dict of knobs. A tweak (pushtrain's retrain loop) rewrites these values in
  place and nothing else in the file; values passed as hyperparameters override them for one attempt.
* ``build_model(hp, input_shape, num_classes)``: returns a compiled ``keras.Model``.

Knobs a tweak may change (bounds the tweak strategy respects):

==================  ===============================================  ==============
knob                meaning                                          bounds
==================  ===============================================  ==============
``epochs``          passes over the training images                  1 .. 60
``batch_size``      images per gradient step                         8 .. 512
``learning_rate``   Adam step size                                   1e-5 .. 0.05
``conv_blocks``     Conv2D + MaxPooling blocks (architecture)        1 .. 4
``filters``         filters of the first block, doubled per block    2 .. 128
``kernel_size``     square kernel size of every Conv2D               2 .. 5
``dense_units``     units of the hidden Dense layer (architecture)   4 .. 512
``dropout``         dropout before the output layer                  0.0 .. 0.6
``seed``            seed for weights and shuffling                   any int
==================  ===============================================  ==============

Stated figures (2 CPU cores, pushtrain's fixed split v1): these deliberately weak defaults reach about
0.2-0.5 accuracy on MNIST-5k and on digits; ``epochs=10, filters=16, dense_units=64, learning_rate=0.003``
reaches >= 0.90 on digits and >= 0.93 on MNIST-5k.
"""

HPARAMS = {
    "epochs": 1,
    "batch_size": 64,
    "learning_rate": 0.0005,
    "conv_blocks": 1,
    "filters": 2,
    "kernel_size": 3,
    "dense_units": 8,
    "dropout": 0.0,
    "seed": 0,
}


def build_model(hp, input_shape, num_classes):
    from tensorflow import keras
    from tensorflow.keras import layers

    inputs = keras.Input(shape=input_shape)
    x = inputs
    for block in range(hp["conv_blocks"]):
        x = layers.Conv2D(hp["filters"] * 2**block, hp["kernel_size"], padding="same", activation="relu")(x)
        # "same" pooling keeps a 1x1 map valid, so small images (8x8 digits) take up to 4 blocks.
        x = layers.MaxPooling2D(padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(hp["dense_units"], activation="relu")(x)
    if hp["dropout"] > 0:
        x = layers.Dropout(hp["dropout"])(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)

    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=hp["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
