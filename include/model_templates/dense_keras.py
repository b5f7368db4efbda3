"""Keras dense network template for pushtrain (kind: ``keras``: Keras without convolution layers).

The platform imports this file only inside the training container. It reads two names:

* ``HPARAMS``: one literal dict of knobs. A tweak (pushtrain's retrain loop) rewrites these values in
  place and nothing else in the file; values passed as hyperparameters override them for one attempt.
* ``build_model(hp, input_shape, num_classes)``: returns a compiled ``keras.Model``.

This is the shape ``pushtrain adapt`` gives the everyday MNIST script: ``Flatten``, a hidden ``Dense``
layer, ``Dropout``, a softmax over the classes.

Knobs a tweak may change (bounds the tweak strategy respects):

==================  ===============================================  ==============
knob                meaning                                          bounds
==================  ===============================================  ==============
``epochs``          passes over the training images                  1 .. 60
``batch_size``      images per gradient step                         8 .. 512
``learning_rate``   Adam step size                                   1e-5 .. 0.05
``dense_units``     units of the hidden Dense layer (architecture)   4 .. 1024
``dropout``         dropout before the output layer                  0.0 .. 0.6
==================  ===============================================  ==============

The defaults are deliberately weak (one epoch, 16 units, a small learning rate), so that a push of this
template shows the retrain loop at work.
"""

HPARAMS = {
    "epochs": 1,
    "batch_size": 64,
    "learning_rate": 0.0002,
    "dense_units": 16,
    "dropout": 0.0,
}


def build_model(hp, input_shape, num_classes):
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Flatten(),
            layers.Dense(hp["dense_units"], activation="relu"),
            layers.Dropout(hp["dropout"]),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=hp["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
