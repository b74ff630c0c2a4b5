"""The reference Keras program (one-block CNN, Adam, batch 32, 10 epochs), run as written
except that the data comes from the same IDX files fashionclf reads, and it is timed.

    python benchmarks/keras_reference.py [--epochs 10] [--threads 2] [--json FILE]

Needs TensorFlow (``pip install '.[bench]'``); without it, prints a note and exits 0 with
``{"skipped": "..."}`` so that ``make bench`` still runs. Runs in its own process so that
TensorFlow's thread pools never share a process with PyTorch's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--predict-repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        result = {"skipped": f"TensorFlow is not installed ({exc}); pip install '.[bench]' to run the Keras peer"}
        return finish(result, args.json)
    from fashionclf.data.fashion_mnist import load_dataset

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    dataset = load_dataset(args.data_dir)
    x_train = dataset.train.images.reshape(-1, 28, 28, 1) / 255.0
    x_test = dataset.test.images.reshape(-1, 28, 28, 1) / 255.0
    y_train, y_test = dataset.train.labels, dataset.test.labels

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.models.Sequential([
        tf.keras.Input(shape=(28, 28, 1)),
        tf.keras.layers.Conv2D(32, (3, 3), activation="relu"),
        tf.keras.layers.MaxPooling2D((2, 2)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    # As the reference program: validation on the test set after every epoch, counted in its time.
    history = model.fit(x_train, y_train, epochs=args.epochs, validation_data=(x_test, y_test), verbose=2)
    train_seconds = time.perf_counter() - start
    _, test_acc = model.evaluate(x_test, y_test, verbose=0)

    model.predict(x_test[:256], batch_size=256, verbose=0)  # warm-up
    rates = []
    for _ in range(args.predict_repeats):
        t = time.perf_counter()
        model.predict(x_test, batch_size=256, verbose=0)
        rates.append(len(x_test) / (time.perf_counter() - t))
    single = x_test[:1]
    model(single, training=False)
    latencies = []
    for _ in range(200):
        t = time.perf_counter()
        model(single, training=False)
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    result = {
        "program": "reference one-block CNN (Keras), 10 epochs, batch 32, Adam",
        "test_accuracy": float(test_acc),
        "train_seconds": train_seconds,
        "epoch_seconds": train_seconds / args.epochs,
        "val_accuracy_per_epoch": [float(a) for a in history.history["val_accuracy"]],
        "predict_images_per_s_batch256": sorted(rates)[len(rates) // 2],
        "latency_ms_batch1_p50": 1000 * latencies[len(latencies) // 2],
        "versions": {"tensorflow": tf.__version__, "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else ""},
    }
    return finish(result, args.json)


def finish(result: dict, path: str | None) -> int:
    text = json.dumps(result, indent=2)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
