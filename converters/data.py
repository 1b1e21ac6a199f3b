"""Caption datasets: captions, splits, normalisation, vocabulary.

Flickr8k is read in two layouts:
- original: `Flicker8k_Dataset/` + `Flickr8k.token.txt` + `Flickr_8k.{train,dev,test}Images.txt`
- Kaggle:   `Images/` + `captions.txt` (CSV `image,caption`); with no split files, a seeded split.
When both are present (as in ../shared/data/flickr8k) the original layout and its standard split win.

The COCO subset (../shared/data/coco-subset: `images/` + `captions.json`) adds the objects Flickr8k
barely has; `combine()` trains on both while keeping each one's dev split for model selection.
"""
from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
SPLITS = ("train", "dev", "test")
SPLIT_SIZES = {"train": 6000, "dev": 1000, "test": 1000}


class DatasetError(ValueError):
    """A missing or garbled dataset file; the message names the file and line."""


@dataclass
class Dataset:
    image_dir: Path
    captions: dict[str, list[str]]  # image file name -> raw captions
    splits: dict[str, list[str]] = field(default_factory=dict)
    name: str = "flickr8k"
    parts: list["Dataset"] = field(default_factory=list)  # what a combined dataset is made of

    def image_path(self, name: str) -> Path:
        for part in self.parts:
            if name in part.captions:
                return part.image_path(name)
        return self.image_dir / name

    def dev_sets(self) -> dict[str, list[str]]:
        """Each part's own dev split: a combined model is selected on all of them."""
        return {p.name: p.splits["dev"] for p in self.parts or [self]}


def normalize(caption: str) -> list[str]:
    """Lower-case words of letters only: 'A dog, running!' -> ['a', 'dog', 'running']."""
    return re.findall(r"[a-z]+", caption.lower())


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc


def _read_token_file(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        name, hash_, _ = key.partition("#")
        if not sep or not hash_ or not caption.strip():
            raise DatasetError(f"{path}:{number}: expected '<image>#<n><TAB><caption>', got {line[:80]!r}")
        captions.setdefault(name, []).append(caption.strip())
    return captions


def _read_captions_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    rows = csv.reader(_read_lines(path))
    header = next(rows, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
        raise DatasetError(f"{path}:1: expected the header 'image,caption', got {header!r}")
    for number, row in enumerate(rows, 2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"{path}:{number}: expected 'image,caption', got {','.join(row)[:80]!r}")
        captions.setdefault(row[0].strip(), []).append(row[1].strip())
    return captions


def load_dataset(root: str | Path, seed: int = 0) -> Dataset:
    """Read captions and the train/dev/test split from a Flickr8k folder in either layout."""
    root = Path(root)
    token_file, csv_file = root / "Flickr8k.token.txt", root / "captions.txt"
    if token_file.exists():
        captions = _read_token_file(token_file)
    elif csv_file.exists():
        captions = _read_captions_csv(csv_file)
    else:
        raise DatasetError(f"{root}: neither Flickr8k.token.txt nor captions.txt found")
    image_dir = next((root / d for d in ("Flicker8k_Dataset", "Images") if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(f"{root}: no image folder (Flicker8k_Dataset/ or Images/)")

    existing = {p.name for p in image_dir.iterdir()}
    missing = sorted(set(captions) - existing)
    if missing:
        log.warning("skipping captions of %d images that do not exist in %s (e.g. %s)",
                    len(missing), image_dir, missing[0])
        captions = {k: v for k, v in captions.items() if k in existing}

    split_files = {s: root / f"Flickr_8k.{s}Images.txt" for s in SPLITS}
    if all(f.exists() for f in split_files.values()):
        splits = {}
        for split, path in split_files.items():
            names = [line.strip() for line in _read_lines(path) if line.strip()]
            splits[split] = [n for n in names if n in captions]
            if len(splits[split]) < len(names):
                log.warning("%s: %d listed images have no captions or file; skipped",
                            path, len(names) - len(splits[split]))
    else:
        names = sorted(captions)
        random.Random(seed).shuffle(names)
        n_test = min(SPLIT_SIZES["test"], len(names) // 8)
        n_dev = min(SPLIT_SIZES["dev"], len(names) // 8)
        splits = {"test": names[:n_test], "dev": names[n_test:n_test + n_dev],
                  "train": names[n_test + n_dev:]}
    return Dataset(image_dir=image_dir, captions=captions, splits=splits)


def load_coco(root: str | Path) -> Dataset:
    """The COCO subset: Karpathy train + restval to train on, Karpathy val as its dev split."""
    root = Path(root)
    path = root / "captions.json"
    try:
        entries = json.loads("\n".join(_read_lines(path)))
        captions = {e["image"]: [c.strip() for c in e["captions"] if c.strip()] for e in entries}
        split_of = {e["image"]: e["karpathy_split"] for e in entries}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: expected a list of {{image, karpathy_split, captions}} ({exc})") from exc
    image_dir = root / "images"
    missing = {n for n in captions if not (image_dir / n).is_file()}
    if missing:
        log.warning("skipping %d COCO images that do not exist in %s (e.g. %s)", len(missing), image_dir, min(missing))
        captions = {k: v for k, v in captions.items() if k not in missing}
    names = sorted(n for n, caps in captions.items() if caps)
    splits = {"train": [n for n in names if split_of[n] != "val"],
              "dev": [n for n in names if split_of[n] == "val"], "test": []}
    return Dataset(image_dir=image_dir, captions=captions, splits=splits, name="coco")


def combine(*datasets: Dataset) -> Dataset:
    """One dataset made of several: captions and splits joined, each part still known by name."""
    captions: dict[str, list[str]] = {}
    for d in datasets:
        clash = captions.keys() & d.captions.keys()
        if clash:
            raise DatasetError(f"{d.name}: image names also in another dataset (e.g. {min(clash)})")
        captions.update(d.captions)
    splits = {s: [n for d in datasets for n in d.splits.get(s, [])] for s in SPLITS}
    return Dataset(image_dir=datasets[0].image_dir, captions=captions, splits=splits,
                   name="+".join(d.name for d in datasets), parts=list(datasets))


def load_training_data(flickr: str | Path, coco: str | Path | None) -> Dataset:
    """Flickr8k, plus the COCO subset when a folder is given."""
    dataset = load_dataset(flickr)
    return combine(dataset, load_coco(coco)) if coco else dataset


@dataclass
class Vocab:
    words: list[str]  # index = token id; SPECIALS first

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, tokenized: list[list[str]], min_count: int) -> "Vocab":
        counts = Counter(w for caption in tokenized for w in caption)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    def log_frequencies(self, tokenized: list[list[str]]) -> list[float]:
        """ln of each token's share of the training text (<end> once per caption, unknown words as
        <unk>, add-one smoothed): the prior the captioner's rarity bonus divides out."""
        counts = np.ones(len(self))
        unk = self.index[UNK]
        for caption in tokenized:
            for w in caption:
                counts[self.index.get(w, unk)] += 1
        counts[self.index[END]] += len(tokenized)
        return [round(float(x), 4) for x in np.log(counts / counts.sum())]

    def encode(self, words: list[str], max_len: int) -> list[int]:
        """<start> w1 .. wn <end>, truncated to max_len words, padded to max_len + 2."""
        unk = self.index[UNK]
        ids = [self.index[START]] + [self.index.get(w, unk) for w in words[:max_len]] + [self.index[END]]
        return ids + [self.index[PAD]] * (max_len + 2 - len(ids))
