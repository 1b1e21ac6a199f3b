"""Train the attention-GRU decoder on cached MobileNetV2 features (teacher forcing).

Early stopping on the dev score of greedy captions (BLEU-4 + 100 x CIDEr, averaged over the dev split of
every dataset trained on: Flickr8k and the COCO subset), evaluated with an exponential moving average of
the weights (it generalises better than the raw weights). Checkpoints every epoch; `--resume` continues.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from converters.data import END, PAD, START, Dataset, Vocab, normalize
from converters.features import FeatureCache
from converters.metrics import corpus_scores
from converters.model import Decoder, DecoderConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    min_count: int = 5          # rarer words become <unk> (about 2.5k words remain)
    max_len: int = 20           # words per caption; covers 98% of Flickr8k captions
    images_per_batch: int = 20  # x 5 captions each
    epochs: int = 20
    learning_rate: float = 4e-4
    lr_decay: float = 0.8       # per epoch
    clip_norm: float = 5.0
    ema_decay: float = 0.999
    patience: int = 3           # epochs without a better dev score (BLEU-4 + 100 x CIDEr, both splits)
    rare_word_weight: float = 0.0  # b: a target word seen n times counts 1 + b exp(-n / 500) (Gu et al. 2020)
    seed: int = 1234


def encode_split(dataset, names: list[str], vocab: Vocab, max_len: int, per_image: int = 5) -> np.ndarray:
    """[len(names) * per_image, max_len + 2] token ids; each image's captions adjacent."""
    rows = []
    for name in names:
        caps = dataset.captions[name]
        caps = (caps * per_image)[:per_image]  # exactly per_image captions per image
        rows += [vocab.encode(normalize(c), max_len) for c in caps]
    return np.asarray(rows, dtype=np.int32)


def word_weights(tokens: np.ndarray, vocab_size: int, rare_word_weight: float) -> np.ndarray:
    """[V] loss weight of each target word: 1 + b exp(-n / 500) for a word seen n times as a target,
    so that the decoder does not learn to say only the commonest words (token-level adaptive training)."""
    seen = np.bincount(tokens[:, 1:].ravel(), minlength=vocab_size)
    return (1.0 + rare_word_weight * np.exp(-seen / 500.0)).astype(np.float32)


def greedy_tokens(decoder: Decoder, features: np.ndarray, start: int, steps: int, batch: int = 250):
    """Batched greedy decoding in TensorFlow, for the per-epoch dev score only (fast, not exported)."""
    @tf.function(reduce_retracing=True)
    def run(feats):
        values, keys, h = decoder.init(feats)
        token = tf.fill([tf.shape(feats)[0]], start)
        out = []
        for _ in range(steps):
            logits, h, _ = decoder.step(token, h, values, keys)
            token = tf.argmax(logits, axis=-1, output_type=tf.int32)
            out.append(token)
        return tf.stack(out, axis=1)
    return np.concatenate([run(tf.constant(features[i:i + batch], tf.float32)).numpy()
                           for i in range(0, len(features), batch)])


def tokens_to_text(ids, vocab: Vocab) -> str:
    words = []
    for i in ids:
        word = vocab.words[int(i)]
        if word == END:
            break
        if word not in (PAD, START):
            words.append(word)
    return " ".join(words)


def references(dataset, names: list[str]) -> dict[str, list[str]]:
    return {n: [" ".join(normalize(c)) for c in dataset.captions[n]] for n in names}


class EMA:
    """Shadow copies of the trainable weights; `swapped()` evaluates with them."""

    def __init__(self, variables, decay: float):
        self.variables, self.decay = variables, decay
        self.shadow = [tf.Variable(v, trainable=False) for v in variables]
        self.updates = tf.Variable(0.0, trainable=False)

    def update(self) -> None:
        # Warm-up as in tf.train.ExponentialMovingAverage(num_updates=...): early on, the average
        # follows the weights closely instead of remembering the random initialisation.
        self.updates.assign_add(1.0)
        decay = tf.minimum(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for s, v in zip(self.shadow, self.variables):
            s.assign(decay * s + (1 - decay) * v)

    def swap(self) -> None:
        for s, v in zip(self.shadow, self.variables):
            tmp = tf.identity(v)
            v.assign(s)
            s.assign(tmp)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax[0].set(title="training loss", xlabel="epoch")
    for name in history[-1]["dev"]:
        ax[1].plot(epochs, [h["dev"][name]["BLEU-4"] for h in history], marker="o", label=f"{name} BLEU-4")
        ax[1].plot(epochs, [100 * h["dev"][name]["CIDEr"] for h in history], marker="o",
                   label=f"{name} CIDEr x100")
    ax[1].set(title="dev (greedy, EMA weights)", xlabel="epoch")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def dev_scores(decoder: Decoder, vocab: Vocab, dev: dict, max_len: int) -> dict:
    """{dev set: {BLEU-4, CIDEr}} of greedy captions; dev: {set: (names, features, references)}."""
    out = {}
    for set_name, (names, feats, refs) in dev.items():
        hyps = greedy_tokens(decoder, feats, vocab.index[START], max_len + 1)
        scores = corpus_scores(refs, {n: tokens_to_text(h, vocab) for n, h in zip(names, hyps)},
                               metrics=("bleu", "cider"))
        out[set_name] = {"BLEU-4": scores["BLEU-4"], "CIDEr": scores["CIDEr"]}
    return out


def selection_score(dev: dict) -> float:
    """What early stopping maximises: BLEU-4 + 100 x CIDEr, averaged over the dev sets."""
    return float(np.mean([s["BLEU-4"] + 100 * s["CIDEr"] for s in dev.values()]))


def train(dataset: Dataset, work: Path, cfg: TrainConfig, decoder_cfg: dict | None = None,
          resume: bool = False) -> dict:
    tf.keras.utils.set_random_seed(cfg.seed)
    train_names = dataset.splits["train"]
    vocab = Vocab.build([normalize(c) for n in train_names for c in dataset.captions[n]], cfg.min_count)
    row_of, features = FeatureCache(work).load()
    train_feats = features[[row_of[n] for n in train_names]]
    dev = {name: (names, features[[row_of[n] for n in names]], references(dataset, names))
           for name, names in dataset.dev_sets().items() if names}
    train_tokens = encode_split(dataset, train_names, vocab, cfg.max_len)
    log.info("vocabulary %d words, %d train images, dev images %s", len(vocab), len(train_names),
             {name: len(d[0]) for name, d in dev.items()})

    dcfg = DecoderConfig(vocab_size=len(vocab), **(decoder_cfg or {}))
    decoder = Decoder(dcfg)
    decoder.build_all()
    optimizer = tf.keras.optimizers.Adam(learning_rate=cfg.learning_rate, global_clipnorm=cfg.clip_norm)
    ema = EMA(decoder.trainable_variables, cfg.ema_decay)
    epoch_var = tf.Variable(0, trainable=False, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(decoder=decoder, optimizer=optimizer, ema=ema.shadow, ema_updates=ema.updates,
                               epoch=epoch_var)
    manager = tf.train.CheckpointManager(ckpt, work / "checkpoints", max_to_keep=1)
    state_file = work / "train_state.json"
    state = {"history": [], "best_score": -1.0, "best_epoch": 0}
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        state = json.loads(state_file.read_text())
        log.info("resumed from epoch %d", int(epoch_var.numpy()))
    (work / "vocab.json").write_text(json.dumps(vocab.words))
    (work / "decoder_config.json").write_text(json.dumps({"decoder": dcfg.to_dict(), "train": asdict(cfg)}))

    per_image = train_tokens.shape[0] // len(train_names)
    weights = tf.constant(word_weights(train_tokens, len(vocab), cfg.rare_word_weight)) \
        if cfg.rare_word_weight else None

    @tf.function
    def train_step(feats, tokens):
        with tf.GradientTape() as tape:
            loss = decoder.caption_loss(feats, tokens, repeat=per_image, training=True, word_weights=weights)
        grads = tape.gradient(loss, decoder.trainable_variables)
        optimizer.apply_gradients(zip(grads, decoder.trainable_variables))
        ema.update()
        return loss

    rng = np.random.default_rng(cfg.seed + int(epoch_var.numpy()))
    bad_epochs = int(epoch_var.numpy()) - state["best_epoch"]
    for epoch in range(int(epoch_var.numpy()) + 1, cfg.epochs + 1):
        if bad_epochs >= cfg.patience:
            log.info("stopped early: no better dev score in the %d epochs since epoch %d "
                     "(a larger --patience continues with --resume)", bad_epochs, state["best_epoch"])
            break
        optimizer.learning_rate.assign(cfg.learning_rate * cfg.lr_decay ** (epoch - 1))
        order = rng.permutation(len(train_names))
        batches = range(0, len(order), cfg.images_per_batch)
        started, losses = time.time(), []
        for i in tqdm(batches, desc=f"epoch {epoch}", unit="batch", mininterval=5):
            idx = np.sort(order[i:i + cfg.images_per_batch])
            rows = (idx[:, None] * per_image + np.arange(per_image)).ravel()
            losses.append(float(train_step(tf.constant(train_feats[idx], tf.float32),
                                           tf.constant(train_tokens[rows]))))
        ema.swap()
        scores = dev_scores(decoder, vocab, dev, cfg.max_len)
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses)), "dev": scores,
                 "dev_score": selection_score(scores), "seconds": round(time.time() - started, 1)}
        if entry["dev_score"] > state["best_score"]:
            state.update(best_score=entry["dev_score"], best_epoch=epoch)
            decoder.save_weights(str(work / "best.weights.h5"))
            bad_epochs = 0
        else:
            bad_epochs += 1
        ema.swap()
        state["history"].append(entry)
        epoch_var.assign(epoch)
        manager.save()
        state_file.write_text(json.dumps(state, indent=1))
        plot_curves(state["history"], work / "training_curves.png")
        log.info("epoch %d: %s", epoch, entry)
    log.info("best dev score %.2f at epoch %d", state["best_score"], state["best_epoch"])
    return state


def load_trained(work: Path) -> tuple[Decoder, Vocab, dict]:
    """The best (EMA) decoder of a finished training run in `work`."""
    meta = json.loads((work / "decoder_config.json").read_text())
    vocab = Vocab(json.loads((work / "vocab.json").read_text()))
    decoder = Decoder(DecoderConfig(**meta["decoder"]))
    decoder.build_all()
    decoder.load_weights(str(work / "best.weights.h5"))
    return decoder, vocab, meta
