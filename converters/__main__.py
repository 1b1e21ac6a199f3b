"""`python -m converters <step>`: the offline steps that make models/ (TensorFlow lives here only)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

COCO = Path("../shared/data/coco-subset")


def _dataset(args):
    from converters.data import load_training_data
    return load_training_data(args.data, args.coco)


def _features(args) -> None:
    from converters.features import extract
    from converters.model import build_encoder
    dataset = _dataset(args)
    names = sorted({n for split in dataset.splits.values() for n in split})
    extract([dataset.image_path(n) for n in names], args.work, build_encoder(args.encoder_weights))


def _train(args) -> None:
    from converters.train import TrainConfig, train
    cfg = TrainConfig(epochs=args.epochs)
    for option in ("images_per_batch", "min_count", "max_len", "learning_rate", "lr_decay",
                   "rare_word_weight", "patience"):
        if getattr(args, option):
            setattr(cfg, option, getattr(args, option))
    train(_dataset(args), args.work, cfg, resume=args.resume)


def _export(args) -> None:
    from converters.export import export
    from converters.model import build_encoder
    from converters.train import load_trained
    decoder, vocab, meta = load_trained(args.work)
    keep = args.models / "captioner-int8" / "encoder.tflite" if args.keep_encoder else None
    export(_dataset(args), args.models, build_encoder(args.encoder_weights), decoder, vocab, meta,
           calibration=args.calibration, keep_encoder=keep)


def _prior(args) -> None:
    from converters.prior import training_sample, write_priors
    from device.modelset import available_sets
    names = args.sets or available_sets(args.models, kind="captioner")
    write_priors([args.models / name for name in names], training_sample(_dataset(args), args.images))


def _evaluate(args) -> None:
    import json

    from converters.evaluate import evaluate, markdown_table
    from device.modelset import find_set
    from device.tagger import load_tagger
    sets = args.sets or [s for s in ("captioner-int8", "captioner-4bit", "captioner-float")
                         if find_set(args.models, s)]
    tagger = None if args.tagger == "none" else load_tagger(args.models, args.tagger)
    report = evaluate(_dataset(args), args.work, args.models, sets, tagger=tagger, beam_width=args.beam_width,
                      num_threads=args.threads, tune=not args.no_tune, keras=not args.no_keras,
                      split=args.split)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown_table(report))


def _all(args) -> None:
    for step in (_features, _train, _export, _evaluate):
        step(args)


# Steps with options of their own: `python -m converters NAME ...` hands the rest to NAME's main().
DELEGATED = {
    "embedder": "export all-MiniLM-L6-v2 to TFLite and measure parity (converters/embedder.py)",
    "projection": "train the image -> text projection for text-to-image search (converters/projection.py)",
    "tags": "export the ImageNet object tagger models/imagenet-tags (converters/tags.py)",
    "retrieval": "the findability benchmark: Recall@K of text queries on a split (converters/retrieval.py)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib
        return importlib.import_module(f"converters.{argv[0]}").main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="python -m converters", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        p.add_argument("--data", type=Path, default=Path("../shared/data/flickr8k"),
                       help="Flickr8k folder (either layout)")
        p.add_argument("--coco", default=str(COCO), help="COCO subset folder trained on beside Flickr8k "
                       "('none': Flickr8k only; default: used when it exists)")
        p.add_argument("--work", type=Path, default=Path("work"), help="feature cache and checkpoints")
        p.add_argument("--models", type=Path, default=Path("models"), help="where model sets go")
        return p

    p = command("features", _features, "extract MobileNetV2 features once (resumable)")
    p.add_argument("--encoder-weights", default="imagenet", help="'imagenet' or 'none' (random, for tests)")
    def training_options(p):
        p.add_argument("--epochs", type=int, default=20)
        p.add_argument("--images-per-batch", type=int, default=0, help="default: TrainConfig's")
        p.add_argument("--min-count", type=int, default=0, help="rarer words become <unk>")
        p.add_argument("--max-len", type=int, default=0, help="words per caption")
        p.add_argument("--learning-rate", type=float, default=0.0, help="epoch 1's Adam learning rate")
        p.add_argument("--lr-decay", type=float, default=0.0, help="learning-rate factor per epoch")
        p.add_argument("--rare-word-weight", type=float, default=0.0,
                       help="b: a word seen n times weighs 1 + b exp(-n / 500) in the loss")
        p.add_argument("--patience", type=int, default=0,
                       help="stop after this many epochs without a better dev score (default: TrainConfig's)")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    training_options(command("train", _train, "train the decoder on the cached features"))

    p = command("export", _export, "write the TFLite model sets to models/")
    p.add_argument("--encoder-weights", default="imagenet")
    p.add_argument("--calibration", type=int, default=200, help="training images to calibrate the encoder")
    p.add_argument("--keep-encoder", action="store_true",
                   help="reuse models/captioner-int8/encoder.tflite instead of converting the encoder again")
    from converters.prior import PRIOR_IMAGES
    p = command("prior", _prior, "add each captioner set's prior (the average training image) for "
                "contrastive decoding; export does this too")
    p.add_argument("--sets", nargs="*", help="captioner sets (default: all in --models)")
    p.add_argument("--images", type=int, default=PRIOR_IMAGES, help="training images averaged")
    p = command("evaluate", _evaluate, "score the model sets (and the Keras model) on the test split")
    p.add_argument("--sets", nargs="*", help="model sets to score (default: all captioner sets)")
    p.add_argument("--split", default="test", choices=("dev", "test"),
                   help="test: Flickr8k test; dev: Flickr8k dev and COCO val")
    p.add_argument("--tagger", default="imagenet-tags", help="object tagger set in --models ('none': no tags)")
    p.add_argument("--beam-width", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-tune", action="store_true", help="keep the manifests' length penalty")
    p.add_argument("--no-keras", action="store_true", help="skip the Keras float reference")
    p.add_argument("--report", type=Path, default=Path("bench/results/evaluate.json"))
    for name, help in DELEGATED.items():
        sub.add_parser(name, help=help + "; NAME --help for its options", add_help=False)
    p = command("all", _all, "features, train, export and evaluate in one go")
    p.add_argument("--encoder-weights", default="imagenet")
    training_options(p)
    p.add_argument("--calibration", type=int, default=200)
    p.add_argument("--report", type=Path, default=Path("bench/results/evaluate.json"))
    p.set_defaults(keep_encoder=False, sets=None, split="test", beam_width=3, threads=2, no_tune=False,
                   no_keras=False, tagger="imagenet-tags")

    args = parser.parse_args(argv)
    if args.coco == "none" or (args.coco == str(COCO) and not COCO.is_dir()):
        args.coco = None
    if getattr(args, "encoder_weights", None) == "none":
        args.encoder_weights = None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("KERAS_HOME", str(Path("../shared/weights/keras").resolve()))
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
