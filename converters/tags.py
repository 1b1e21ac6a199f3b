"""Export models/imagenet-tags: ImageNet object tags from the captioner's own pooled features.

`python -m converters tags` reads the int8 MobileNetV2 ImageNet classifier in ../shared/weights/imagenet
(Apache-2.0), keeps only its last layer (1280 -> 1001 logits) and writes it with the labels and a plain
word for each label. The captioner's encoder is the same network family with the same ImageNet
weights, so that layer applied to the encoder's mean-pooled features gives the classifier's answer
without running a second backbone (device/tagger.py). The word map folds the 1,000 fine classes into
the words people type: every dog breed -> dog, tabby / Egyptian cat -> cat, espresso -> cup and coffee.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from device.modelset import write_manifest

log = logging.getLogger(__name__)

CLASSIFIER = Path("../shared/weights/imagenet")
SET_NAME = "imagenet-tags"
MIN_P, TOP_K = 0.15, 3  # tags shown and stored: at most TOP_K words with at least MIN_P confidence

# Label ranges (1001-class index, inclusive) of animals that people name by kind, not species.
RANGES = [
    (1, 7, "fish"), (8, 9, "chicken"), (10, 25, "bird"), (26, 30, "salamander"), (31, 33, "frog"),
    (34, 38, "turtle"), (39, 49, "lizard"), (50, 50, "crocodile"), (51, 51, "alligator"), (53, 69, "snake"),
    (71, 78, "spider"), (81, 97, "bird"), (98, 99, "duck"), (100, 100, "goose"), (101, 101, "swan"),
    (102, 102, "elephant"), (105, 105, "kangaroo"), (119, 122, "crab"), (123, 125, "lobster"),
    (128, 147, "bird"), (148, 149, "whale"), (151, 151, "seal"), (152, 269, "dog"), (270, 273, "wolf"),
    (274, 276, "dog"), (278, 281, "fox"), (282, 286, "cat"), (295, 298, "bear"), (301, 308, "beetle"),
    (322, 327, "butterfly"), (331, 333, "rabbit"), (342, 344, "pig"), (346, 347, "cow"),
    (349, 350, "sheep"), (351, 351, "goat"), (352, 354, "antelope"), (366, 366, "orangutan"),
    (369, 385, "monkey"), (386, 387, "elephant"), (388, 389, "panda"), (390, 398, "fish"),
]
# Objects whose first ImageNet name is not the word people use (a label may give several words).
WORDS = {
    "espresso": ("cup", "coffee"), "coffee mug": ("cup", "coffee"), "espresso maker": "coffee maker",
    "missile": "rocket", "projectile": "rocket", "space shuttle": "rocket", "sorrel": "horse",
    "sports car": "car", "convertible": "car", "racer": "car", "cab": "taxi", "limousine": "car",
    "beach wagon": "car", "minivan": "car", "jeep": "car", "Model T": "car", "car wheel": "car",
    "police van": "van", "moving van": "van", "school bus": "bus", "trolleybus": "bus", "minibus": "bus",
    "passenger car": "train", "electric locomotive": "train", "steam locomotive": "train",
    "bullet train": "train", "freight car": "train", "streetcar": "tram", "mountain bike": "bicycle",
    "bicycle-built-for-two": "bicycle", "tricycle": "bicycle", "motor scooter": "scooter",
    "airliner": "airplane", "warplane": "airplane", "wing": "airplane", "speedboat": "boat",
    "yawl": "boat", "catamaran": "boat", "trimaran": "boat", "schooner": "boat", "lifeboat": "boat",
    "fireboat": "boat", "gondola": "boat", "container ship": "ship", "liner": "ship", "pirate": "ship",
    "trailer truck": "truck", "garbage truck": "truck", "tow truck": "truck", "pickup": "truck",
    "fire engine": "fire truck", "notebook": "laptop", "desktop computer": "computer",
    "hand-held computer": "phone", "cellular telephone": "phone", "dial telephone": "phone",
    "pay-phone": "phone", "monitor": "screen", "computer keyboard": "keyboard",
    "typewriter keyboard": "keyboard", "dining table": "table", "studio couch": "couch",
    "rocking chair": "chair", "folding chair": "chair", "barber chair": "chair", "four-poster": "bed",
    "quilt": "bed", "jersey": "shirt", "sweatshirt": "shirt", "military uniform": "uniform",
    "pajama": "pajamas", "jean": "jeans", "swimming trunks": "swimsuit", "maillot": "swimsuit",
    "mortarboard": "graduation cap", "cowboy hat": "hat", "sombrero": "hat", "crash helmet": "helmet",
    "football helmet": "helmet", "soccer ball": "ball", "tennis ball": "ball", "golf ball": "ball",
    "rugby ball": "ball", "volleyball": "ball", "croquet ball": "ball", "ping-pong ball": "ball",
    "running shoe": "shoe", "Loafer": "shoe", "cowboy boot": "boot", "Granny Smith": "apple",
    "hotdog": "hot dog", "cheeseburger": "burger", "French loaf": "bread", "soup bowl": "bowl",
    "mixing bowl": "bowl", "wine bottle": "bottle", "beer bottle": "bottle", "pop bottle": "bottle",
    "water bottle": "bottle", "red wine": "wine", "beer glass": "beer", "toilet seat": "toilet",
    "analog clock": "clock", "wall clock": "clock", "digital clock": "clock", "park bench": "bench",
    "street sign": "sign", "seashore": "beach", "sandbar": "beach", "lakeside": "lake", "alp": "mountain",
    "ballplayer": "baseball player", "scuba diver": "diver", "web site": "",
    "black-footed ferret": "ferret", "book jacket": "book", "comic book": "book",
    "home theater": "television", "entertainment center": "television", "teddy": "teddy bear",
    "tennis racket": "racket", "potpie": "pie", "meat loaf": "meat", "mashed potato": "potato",
    "head cabbage": "cabbage", "bell pepper": "pepper", "daisy": "flower",
    "yellow lady's slipper": "flower", "hip": "flower", "ear": "corn", "toilet tissue": "toilet paper",
    "pot": "flowerpot",
}


def label_words(index: int, label: str) -> list[str]:
    """The plain words for one of the 1001 labels (none for background and web-site classes)."""
    if index == 0:
        return []
    for first, last, word in RANGES:
        if first <= index <= last:
            return [word]
    name = label.split(",")[0].strip()
    words = WORDS.get(name, name.lower())
    return list(words) if isinstance(words, tuple) else [words] if words else []


def read_logits_layer(classifier: Path) -> tuple[np.ndarray, float, int, np.ndarray]:
    """(uint8 kernel [1001,1280], its scale and zero point, float32 bias [1001]) of the last layer."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    # Without the default XNNPACK delegate, which may take over the constant tensors read here.
    interpreter = Interpreter(model_path=str(classifier),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    details = interpreter.get_tensor_details()
    kernel = next(d for d in details if d["shape"].tolist() == [1001, 1, 1, 1280])
    bias = next(d for d in details if d["shape"].tolist() == [1001] and d["dtype"] == np.int32)
    scale, zero = kernel["quantization"]
    weight = interpreter.get_tensor(kernel["index"]).reshape(1001, -1)
    return weight, float(scale), int(zero), interpreter.get_tensor(bias["index"]) * np.float32(bias["quantization"][0])


def export(classifier_dir: Path, out: Path) -> Path:
    labels = (classifier_dir / "imagenet_labels.txt").read_text().splitlines()
    weight, scale, zero, bias = read_logits_layer(classifier_dir / "mobilenet_v2_1.0_224_quant.tflite")
    if len(labels) != weight.shape[0]:
        raise SystemExit(f"{classifier_dir}: {len(labels)} labels for {weight.shape[0]} classes")
    set_dir = out / SET_NAME
    set_dir.mkdir(parents=True, exist_ok=True)
    head = set_dir / "head.npz"
    np.savez(head, weight=weight, weight_scale=np.float32(scale), weight_zero=np.int32(zero),
             bias=bias.astype(np.float32))
    words = [label_words(i, label) for i, label in enumerate(labels)]
    manifest = {
        "name": SET_NAME, "kind": "tagger", "version": 1,
        "files": {"head": head.name},  # write_manifest adds sha256 and sizes
        "source": "last layer (Logits/Conv2d_1c_1x1) of the MobileNetV2 1.0/224 int8 ImageNet classifier "
                  "(Apache-2.0), applied to the captioner encoder's mean-pooled features",
        "quantization": "uint8 weights with one scale and zero point, as in the classifier",
        "input": "float32 [1280]: mean of the captioner encoder's 7x7 feature map",
        "tags": {"min_p": MIN_P, "top_k": TOP_K},
        "labels": labels, "words": words,
    }
    write_manifest(set_dir, manifest)
    log.info("%s: %d labels -> %d words, %d bytes", set_dir, len(labels), len({w for ws in words for w in ws}),
             head.stat().st_size)
    return set_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters tags", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER,
                        help="folder with mobilenet_v2_1.0_224_quant.tflite and imagenet_labels.txt")
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    export(args.classifier, args.models)
    return 0
