"""`python -m converters <step>`: the offline steps that make models/ (TensorFlow lives here only)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _features(args) -> None:
    from converters.data import load_dataset
    from converters.features import extract
    from converters.model import build_encoder
    dataset = load_dataset(args.data)
    names = sorted({n for split in dataset.splits.values() for n in split})
    extract([dataset.image_path(n) for n in names], args.work, build_encoder(args.encoder_weights))


def _train(args) -> None:
    from converters.train import TrainConfig, train
    cfg = TrainConfig(epochs=args.epochs)
    if args.images_per_batch:
        cfg.images_per_batch = args.images_per_batch
    train(args.data, args.work, cfg, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        p.add_argument("--data", type=Path, default=Path("../shared/data/flickr8k"),
                       help="Flickr8k folder (either layout)")
        p.add_argument("--work", type=Path, default=Path("work"), help="feature cache and checkpoints")
        return p

    p = command("features", _features, "extract MobileNetV2 features once (resumable)")
    p.add_argument("--encoder-weights", default="imagenet", help="'imagenet' or 'none' (random, for tests)")
    p = command("train", _train, "train the decoder on the cached features")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--images-per-batch", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    args = parser.parse_args(argv)
    if getattr(args, "encoder_weights", None) == "none":
        args.encoder_weights = None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("KERAS_HOME", str(Path("../shared/weights/keras").resolve()))
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
