"""An experiment of issue 10 (models/README.md, "a fine-tune on the two views"), kept so its figures can be
made again: fine-tune a FER2013 model on the runtime's two-view prediction, and score weight means of models
on the two views.

The classifier averages the probabilities of a face and its mirror zoomed out by 1.05 (``input.mirror_zoom``).
``train`` puts the loss on that mean (one network run on both views; hard labels, mixup, the usual
augmentation) and saves the one-view network after each epoch (OUT/ep<N>.keras) and, BN-recalibrated, at the
end (OUT/final.keras). ``soup`` averages the weights of the models given, recalibrates BN, prints the one- and
two-view accuracy on PublicTest and PrivateTest, and saves the mean (export it with ``python -m training
export``). The zoom here is TensorFlow's area resize, the runtime's is OpenCV's (``bus.preprocess.zoom``): the
int8 figures come from ``python -m training calibrate``.

  python -m training.two_view train INIT OUT EPOCHS LR SEED [DATA] [--limit N]
  python -m training.two_view soup OUT.keras MODEL.keras... [--data DATA]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.runtime import configure

log = logging.getLogger("two_view")


def second_view(x: tf.Tensor) -> tf.Tensor:
    """Float model input N x 48 x 48 x 1 -> its mirror, edge-replicated one pixel a side, shrunk back to 48."""
    v = tf.reverse(x, axis=[2])
    v = tf.pad(v, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    return tf.image.resize(v, (48, 48), method="area")


class SecondView(keras.layers.Layer):
    def call(self, x: tf.Tensor) -> tf.Tensor:
        return second_view(x)


def scores(model: keras.Model, splits: dict, pixels: dict) -> str:
    out = []
    for name, split in (("PublicTest", "val"), ("PrivateTest", "test")):
        x = pixels[split].astype(np.float32) / 255.0
        p1 = model.predict(x, batch_size=512, verbose=0)
        p2 = model.predict(second_view(x).numpy(), batch_size=512, verbose=0)
        labels = splits[split].labels
        one, two = (p1.argmax(1) == labels).mean(), ((p1 + p2).argmax(1) == labels).mean()
        out.append(f"{name} one view {one:.4f}, two views {two:.4f}")
    return "; ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("init", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("epochs", type=int)
    t.add_argument("lr", type=float)
    t.add_argument("seed", type=int)
    t.add_argument("data", type=Path, nargs="?", default=Path("../shared/data/fer2013"))
    t.add_argument("--limit", type=int, help="train on the first N training images only (a smoke run)")
    s = sub.add_parser("soup")
    s.add_argument("out", type=Path)
    s.add_argument("models", type=Path, nargs="+")
    s.add_argument("--data", type=Path, default=Path("../shared/data/fer2013"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    configure("auto" if args.cmd == "train" else "off")
    from training.pipelines import load_source
    from training.soup import average
    from training.train import TrainConfig, _targets, compile_model, model_pixels, pipeline, recalibrate_bn

    splits = load_source("fer", args.data)
    pixels = {k: model_pixels(v, 48, "grey") for k, v in splits.items()}
    if args.cmd == "soup":
        models = [keras.models.load_model(p, compile=False) for p in args.models]
        model = models[0]
        model.set_weights(average([m.get_weights() for m in models]))
        if len(models) > 1:
            recalibrate_bn(model, pixels["train"])
        log.info("mean of %d: %s", len(models), scores(model, splits, pixels))
        model.save(args.out)
        return
    train_x, train_y = pixels["train"], _targets(splits["train"])
    if args.limit:
        train_x, train_y = train_x[: args.limit], train_y[: args.limit]
    tf.keras.utils.set_random_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    base = keras.models.load_model(args.init, compile=False)
    inp = keras.Input((48, 48, 1))
    pair = keras.Model(inp, keras.layers.Average()([base(inp), base(SecondView()(inp))]))
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, mix="mixup", mix_alpha=0.2, warmup_epochs=1)
    compile_model(pair, len(train_x) // cfg.batch, cfg)
    out = args.out

    class Save(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            base.save(out / f"ep{epoch + 1}.keras")
            log.info("epoch %d: %s", epoch + 1, {k: round(float(v), 4) for k, v in (logs or {}).items()})

    pair.fit(
        pipeline(train_x, train_y, cfg.batch, True, cfg),
        validation_data=pipeline(pixels["val"], _targets(splits["val"]), 256, False, cfg),
        epochs=cfg.epochs,
        callbacks=[Save()],
        verbose=0,
    )
    recalibrate_bn(base, pixels["train"])
    base.save(out / "final.keras")
    log.info("final, BN recalibrated: %s", scores(base, splits, pixels))


if __name__ == "__main__":
    main()
