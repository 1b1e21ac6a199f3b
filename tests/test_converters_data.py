"""The dataset readers: Flickr8k in both layouts, the COCO subset, combining them, clear errors, vocabulary."""
import math
import shutil
from pathlib import Path

import pytest

from converters.data import (
    DatasetError,
    Vocab,
    combine,
    load_coco,
    load_dataset,
    load_training_data,
    normalize,
)

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_flickr"
COCO = Path(__file__).parent / "fixtures" / "tiny_coco"


def original_layout(tmp_path: Path) -> Path:
    """The fixture rewritten in the original layout: Flicker8k_Dataset/, token file, split lists."""
    root = tmp_path / "orig"
    shutil.copytree(FIXTURE / "Images", root / "Flicker8k_Dataset")
    rows = (FIXTURE / "captions.txt").read_text().splitlines()[1:]
    seen: dict[str, int] = {}
    lines = []
    for row in rows:
        name, caption = row.split(",", 1)
        lines.append(f"{name}#{seen.setdefault(name, 0)}\t{caption}")
        seen[name] += 1
    lines.append("missing_image.jpg#0\tA caption of an image that is not there .")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    names = sorted(seen)
    for split, part in (("train", names[:8]), ("dev", names[8:10]), ("test", names[10:])):
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(part) + "\n")
    return root


def test_kaggle_layout_gets_a_seeded_split_of_every_image():
    data = load_dataset(FIXTURE)
    assert len(data.captions) == 12
    assert sum(len(s) for s in data.splits.values()) == 12
    assert set(data.splits["test"]).isdisjoint(data.splits["train"])
    assert load_dataset(FIXTURE).splits == data.splits  # deterministic
    assert data.image_path("fox_in_snow.jpg").is_file()


def test_original_layout_uses_the_split_files_and_skips_missing_images(tmp_path, caplog):
    data = load_dataset(original_layout(tmp_path))
    assert [len(data.splits[s]) for s in ("train", "dev", "test")] == [8, 2, 2]
    assert "missing_image.jpg" not in data.captions
    assert "do not exist" in caplog.text
    assert data.captions["cat_in_box.jpg"][0] == "a cat sits in a cardboard box"


def test_garbled_token_file_names_file_and_line(tmp_path):
    root = original_layout(tmp_path)
    token = root / "Flickr8k.token.txt"
    lines = token.read_text().splitlines()
    lines[3] = "this line has no tab or hash"
    token.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"Flickr8k.token.txt:4: expected"):
        load_dataset(root)


def test_garbled_csv_and_missing_files_are_clear_errors(tmp_path):
    root = tmp_path / "kaggle"
    shutil.copytree(FIXTURE, root)
    (root / "captions.txt").write_text("img,text\nx.jpg,a dog\n")
    with pytest.raises(DatasetError, match=r"captions.txt:1: expected the header"):
        load_dataset(root)
    (root / "captions.txt").unlink()
    with pytest.raises(DatasetError, match="neither Flickr8k.token.txt nor captions.txt"):
        load_dataset(root)


def test_normalize_and_vocabulary():
    assert normalize("A dog, running! 2 times.") == ["a", "dog", "running", "times"]
    vocab = Vocab.build([["a", "dog"], ["a", "cat"], ["a", "dog"]], min_count=2)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocab.words[4:] == ["a", "dog"]
    ids = vocab.encode(["a", "cat", "dog", "runs"], max_len=3)
    assert [vocab.words[i] for i in ids] == ["<start>", "a", "<unk>", "dog", "<end>"]


def test_word_frequencies_count_each_caption_end_and_fold_unknown_words_into_unk():
    vocab = Vocab.build([["a", "dog"], ["a", "cat"], ["a", "dog"]], min_count=2)
    logf = dict(zip(vocab.words, vocab.log_frequencies([["a", "dog"], ["a", "cat"], ["a", "dog"]])))
    # add-one counts: pad 1, start 1, end 1+3, unk 1+1 ("cat"), a 1+3, dog 1+2; total 15
    assert logf == pytest.approx({"<pad>": math.log(1 / 15), "<start>": math.log(1 / 15),
                                  "<end>": math.log(4 / 15), "<unk>": math.log(2 / 15),
                                  "a": math.log(4 / 15), "dog": math.log(3 / 15)}, abs=1e-4)


def test_coco_layout_trains_on_train_and_restval_and_selects_on_val():
    coco = load_coco(COCO)
    assert coco.name == "coco" and len(coco.captions) == 4
    assert coco.splits == {"train": ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg"],
                           "dev": ["000000000004.jpg"], "test": []}
    assert coco.image_path("000000000004.jpg").is_file()


def test_combined_data_keeps_each_dev_split_and_finds_every_image():
    both = load_training_data(FIXTURE, COCO)
    flickr = load_dataset(FIXTURE)
    assert both.splits["train"] == flickr.splits["train"] + load_coco(COCO).splits["train"]
    assert both.dev_sets() == {"flickr8k": flickr.splits["dev"], "coco": ["000000000004.jpg"]}
    assert all(both.image_path(n).is_file() for n in both.captions)
    assert load_training_data(FIXTURE, None).dev_sets() == {"flickr8k": flickr.splits["dev"]}
    with pytest.raises(DatasetError, match="also in another dataset"):
        combine(flickr, flickr)


def test_garbled_coco_captions_are_a_clear_error(tmp_path):
    shutil.copytree(COCO, tmp_path / "coco")
    (tmp_path / "coco" / "captions.json").write_text('[{"image": "x.jpg"}]')
    with pytest.raises(DatasetError, match=r"captions.json: expected a list"):
        load_coco(tmp_path / "coco")
    (tmp_path / "coco" / "captions.json").write_text("not json")
    with pytest.raises(DatasetError, match=r"captions.json: expected a list"):
        load_coco(tmp_path / "coco")
