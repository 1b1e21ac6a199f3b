"""Tag precision (converters/evaluate.py): a tag counts when a reference caption says its word."""
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from converters.data import Dataset  # noqa: E402
from converters.evaluate import tag_precision  # noqa: E402


def test_tag_precision_counts_words_plurals_and_word_pairs_the_references_use():
    data = Dataset(image_dir=Path("."), captions={
        "a.jpg": ["Two cats sleep on a sofa.", "A cat and a kitten"],
        "b.jpg": ["A child hugs a teddy bear", "a boy with his toy"],
    })
    tags = {"a.jpg": ["cat", "sofa", "dog"], "b.jpg": ["teddy bear", "uniform"]}
    # cat (via "cats"/"cat"), sofa and teddy bear are said; dog and uniform are not: 3 of 5
    assert tag_precision(data, tags) == {"tag_precision": 60.0, "tags_per_image": 2.5}
    assert tag_precision(data, {}) == {"tag_precision": 0.0, "tags_per_image": 0.0}
