"""The captioner: a frozen MobileNetV2 encoder and a Show-Attend-Tell decoder with a GRU.

The decoder is written as two functions, `init` (once per image) and `step` (once per word), because
that is how it is exported and run on the device: the numpy beam search in device/decoder.py calls them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import tensorflow as tf
from keras import layers


@dataclass
class DecoderConfig:
    vocab_size: int
    feat_dim: int = 1280      # MobileNetV2 channels
    value_dim: int = 512      # features projected once per image
    attn_dim: int = 256       # additive attention
    hidden: int = 512         # GRU state
    embed: int = 256          # word embedding and deep-output width
    dropout: float = 0.5      # on features, word embeddings and the output layer
    attn_penalty: float = 1.0  # doubly-stochastic attention regulariser (Xu et al. 2015, eq. 14)

    def to_dict(self) -> dict:
        return asdict(self)


def build_encoder(weights: str | None = "imagenet") -> keras.Model:
    """uint8-range RGB [B,224,224,3] (as float) -> MobileNetV2 feature map [B,49,1280]; frozen.

    The [-1, 1] scaling is the first layer, so the exported int8 model takes raw uint8 pixels.
    """
    backbone = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False,
                                              weights=weights)
    backbone.trainable = False
    pixels = keras.Input((224, 224, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(pixels)
    x = backbone(x, training=False)
    return keras.Model(pixels, layers.Reshape((49, 1280))(x), name="encoder")


class Decoder(keras.Model):
    def __init__(self, cfg: DecoderConfig):
        super().__init__(name="decoder")
        self.cfg = cfg
        self.value_proj = layers.Dense(cfg.value_dim, activation="relu", name="value_proj")
        self.key_proj = layers.Dense(cfg.attn_dim, name="key_proj")
        self.init_h = layers.Dense(cfg.hidden, activation="tanh", name="init_h")
        # The embedding is a weight matrix used through a one-hot matmul, so the exporters see a
        # FULLY_CONNECTED op they can quantise to 4 bits like the others (a GATHER they would not).
        self.embedding = self.add_weight(shape=(cfg.vocab_size, cfg.embed), name="embedding",
                                         initializer=keras.initializers.RandomUniform(-0.1, 0.1))
        self.query_proj = layers.Dense(cfg.attn_dim, use_bias=False, name="query_proj")
        self.attn_score = layers.Dense(1, name="attn_score")
        self.gate = layers.Dense(cfg.value_dim, activation="sigmoid", name="gate")
        self.gru = layers.GRUCell(cfg.hidden, name="gru")
        self.out_h = layers.Dense(cfg.embed, name="out_h")
        self.out_c = layers.Dense(cfg.embed, use_bias=False, name="out_c")
        self.logits = layers.Dense(cfg.vocab_size, name="logits")
        self.drop = layers.Dropout(cfg.dropout)

    def init(self, features, training=False):
        """features [B,49,F] -> values [B,49,D], keys [B,49,A], h [B,H]."""
        values = self.value_proj(self.drop(features, training=training))
        keys = self.key_proj(values)
        h = self.init_h(tf.reduce_mean(values, axis=1))
        return values, keys, h

    def step(self, token, h, values, keys, training=False):
        """One word: token [B] int32 -> logits [B,V], new h [B,H], attention alpha [B,49]."""
        query = self.query_proj(h)[:, None, :]
        alpha = tf.nn.softmax(self.attn_score(tf.tanh(keys + query))[..., 0], axis=-1)
        context = self.gate(h) * tf.reduce_sum(alpha[..., None] * values, axis=1)
        word = tf.one_hot(token, self.cfg.vocab_size) @ self.embedding
        word = self.drop(word, training=training)
        h, _ = self.gru(tf.concat([word, context], axis=-1), [h], training=training)
        out = tf.tanh(self.out_h(self.drop(h, training=training)) + self.out_c(context) + word)
        return self.logits(self.drop(out, training=training)), h, alpha

    def caption_loss(self, features, tokens, repeat: int = 1, training=True, word_weights=None):
        """Teacher-forced cross-entropy + attention penalty.

        features [B,49,F]; tokens [B*repeat, T] (each image's `repeat` captions are adjacent);
        word_weights [V], optional: how much each target word's cross-entropy counts.
        """
        values, keys, h = self.init(features, training=training)
        if repeat > 1:  # project each image once, then share it among its captions
            values, keys, h = (tf.repeat(t, repeat, axis=0) for t in (values, keys, h))
        steps = tokens.shape[1] - 1
        xent, alpha_sum = 0.0, 0.0
        mask = tf.cast(tokens[:, 1:] != 0, tf.float32)
        weight = mask if word_weights is None else mask * tf.gather(word_weights, tokens[:, 1:])
        for t in range(steps):
            logits, h, alpha = self.step(tokens[:, t], h, values, keys, training=training)
            xent += weight[:, t] * tf.nn.sparse_softmax_cross_entropy_with_logits(tokens[:, t + 1], logits)
            alpha_sum += mask[:, t][:, None] * alpha
        words = tf.reduce_sum(mask)
        # Each position should receive about one unit of attention over the whole caption.
        penalty = tf.reduce_mean((1.0 - alpha_sum) ** 2)
        return tf.reduce_sum(xent) / words + self.cfg.attn_penalty * penalty

    def build_all(self) -> None:
        """Create every weight by running one dummy step."""
        values, keys, h = self.init(tf.zeros((1, 49, self.cfg.feat_dim)))
        self.step(tf.zeros((1,), tf.int32), h, values, keys)
        self.built = True  # Keras only marks models built by __call__, which this one does not use
