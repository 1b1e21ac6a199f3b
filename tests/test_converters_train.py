"""The training loss's optional weighting of rare words (converters/train.py, converters/model.py)."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from converters.model import Decoder, DecoderConfig  # noqa: E402
from converters.train import word_weights  # noqa: E402

# <pad>=0 <start>=1 <end>=2 <unk>=3, then words 4..7; word 4 is in both captions, 7 in none
TOKENS = np.array([[1, 4, 5, 2, 0], [1, 4, 6, 2, 0]], dtype=np.int32)


def test_a_word_weighs_one_plus_b_when_never_seen_and_less_the_more_it_is_seen():
    weights = word_weights(TOKENS, 8, rare_word_weight=1.0)
    assert weights[7] == pytest.approx(2.0)
    assert weights[4] == pytest.approx(1 + np.exp(-2 / 500)) and weights[4] < weights[5]
    assert weights[5] == weights[6]
    common = word_weights(np.tile(TOKENS, (1000, 1)), 8, rare_word_weight=1.0)  # word 4 seen 2,000 times
    assert common[4] == pytest.approx(1.0, abs=0.02)
    assert np.array_equal(word_weights(TOKENS, 8, rare_word_weight=0.0), np.ones(8, np.float32))


def test_weighting_a_word_more_raises_its_share_of_the_loss():
    tf.keras.utils.set_random_seed(0)
    decoder = Decoder(DecoderConfig(vocab_size=8, feat_dim=16, value_dim=8, attn_dim=8, hidden=8, embed=8))
    decoder.build_all()
    features = tf.random.normal((2, 49, 16))
    tokens = tf.constant(TOKENS)

    def loss(weights=None):
        return float(decoder.caption_loss(features, tokens, training=False, word_weights=weights))

    assert loss(tf.ones(8)) == pytest.approx(loss())
    heavier = tf.constant([1, 1, 1, 1, 1, 3, 1, 1], tf.float32)  # word 5, in the first caption only
    assert loss(heavier) > loss()
