"""Dynamic masking: fresh masked-LM masks drawn inside tf.data each time an
example is read (`--dynamic_masking`), instead of the masks fixed in its
record.

RoBERTa (Liu et al., 2019, section 4.1) found masks drawn anew at every
read at least as good as static ones; with static masks `--dupe_factor` is
the only source of variety. The masks follow the static generator's rule
(train.data.examples.mask_tokens, Google's):

- the count: round(masked_lm_prob * tokens), [CLS] and [SEP]s counted,
  at least 1 and at most max_predictions;
- candidates: every real token but [CLS] and [SEP]; with whole-word masking
  a WordPiece continuation ("##...") joins the token before it, and whole
  words are taken in random order, a word that would overshoot the count
  skipped;
- of the chosen tokens, 80 % become [MASK], 10 % a random ordinary token,
  10 % stay.

Any record works: the original tokens are restored first (the masked
positions of the record get their `masked_lm_ids` back), so records made
with static masks, or with none, can be masked dynamically.

An example's draws are a pure function of the run's seed and the example's
position in the stream (train.data.order's tag: pipeline, block, index), so
a resumed run draws the masks an uninterrupted one would, and the same
record read in another epoch (another block) gets other masks.
"""

import dataclasses

import tensorflow as tf

from train.data import order
from train.data.tokenization import read_vocab

# Folded into each example's key before its position: the order's own
# draws fold in 1 and 2 (train.data.order).
_MASKING_SALT = 3
# The three draws per token: word priority, replacement kind, random token.
_DRAWS = 3


@dataclasses.dataclass(frozen=True)
class MaskingRule:
    """What a mask is drawn from: the vocabulary's ids and the rule's
    settings (the same flags as the static generator's)."""

    mask_id: int
    cls_id: int
    sep_id: int
    # Ids a random replacement may take: no special token.
    ordinary_ids: tuple
    # For each id of the vocabulary, whether it continues a word ("##").
    continues_word: tuple
    masked_lm_prob: float
    whole_word_mask: bool

    @classmethod
    def from_vocab_file(cls, vocab_file, masked_lm_prob, whole_word_mask):
        tokens = read_vocab(vocab_file)
        index = {t: i for i, t in enumerate(tokens)}
        ordinary = tuple(i for i, t in enumerate(tokens)
                         if not (t.startswith("[") and t.endswith("]")))
        return cls(
            mask_id=index["[MASK]"], cls_id=index["[CLS]"],
            sep_id=index["[SEP]"], ordinary_ids=ordinary,
            continues_word=tuple(t.startswith("##") for t in tokens),
            masked_lm_prob=float(masked_lm_prob),
            whole_word_mask=bool(whole_word_mask))


def restore_tokens(features):
    """input_ids with each masked position's original id put back:
    ids[b, positions[b, p]] = masked_lm_ids[b, p] where weights[b, p] > 0."""
    ids = features["input_ids"]
    length = tf.shape(ids)[1]
    real = tf.cast(features["masked_lm_weights"] > 0, tf.int32)
    # [batch, predictions, length]: where each real prediction points.
    at = tf.one_hot(features["masked_lm_positions"], length,
                    dtype=tf.int32) * real[:, :, None]
    restored = tf.reduce_max(at, axis=1) > 0
    originals = tf.reduce_sum(at * features["masked_lm_ids"][:, :, None],
                              axis=1)
    return tf.where(restored, originals, ids)


def wanted_counts(input_mask, masked_lm_prob, max_predictions):
    """Google's count per example: min(P, max(1, round(prob * tokens))),
    the tokens counting [CLS] and [SEP]s. tf.round rounds half to even, as
    Python's round does."""
    tokens = tf.reduce_sum(tf.cast(input_mask, tf.float32), axis=1)
    wanted = tf.cast(tf.round(tokens * masked_lm_prob), tf.int32)
    return tf.clip_by_value(wanted, 1, max_predictions)


def example_draws(tags, seed, length):
    """[batch, 3, length] uniforms in [0, 1), one set per example, from the
    run's seed and the example's tag [pipeline, block, index]."""
    def draws(tag):
        key = order.stateless_key(seed, _MASKING_SALT, tag[0], tag[1], tag[2])
        return tf.random.stateless_uniform([_DRAWS, length], key,
                                           alg=order.ALGORITHM)
    return tf.map_fn(draws, tags, fn_output_signature=tf.float32)


def word_starts(ids, candidate, rule):
    """Where a maskable word starts: every candidate, or with whole-word
    masking a candidate that is not a "##" piece right after another
    candidate."""
    if not rule.whole_word_mask:
        return candidate
    continues = tf.gather(tf.constant(rule.continues_word), ids)
    after_candidate = tf.pad(candidate[:, :-1], [[0, 0], [1, 0]])
    return candidate & ~(continues & after_candidate)


def _take_greedily(lengths, wanted):
    """Words in their drawn order, each taken when it still fits: total +
    length <= wanted (one that would overshoot is skipped, as Google's
    loop does). lengths [batch, words] -> taken [batch, words]."""
    def step(total, length):
        take = (length > 0) & (total + length <= wanted)
        return total + tf.where(take, length, 0), take

    _, taken = tf.scan(
        lambda carry, length: step(carry[0], length),
        tf.transpose(lengths),
        initializer=(tf.zeros_like(wanted), tf.zeros_like(wanted, tf.bool)))
    return tf.transpose(taken)


def choose_positions(ids, input_mask, priorities, rule, max_predictions):
    """The positions to predict, [batch, length] bool: whole words in the
    order of their drawn priorities, up to the wanted count."""
    batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
    candidate = ((input_mask > 0) & tf.not_equal(ids, rule.cls_id)
                 & tf.not_equal(ids, rule.sep_id))
    starts = word_starts(ids, candidate, rule)
    # Each position's word: the number of starts up to it, less one.
    word = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1
    word = tf.where(candidate, word, length)  # no word: a spare slot
    rows = tf.range(batch)[:, None]
    segment = rows * (length + 1) + word
    word_lengths = tf.reshape(tf.math.unsorted_segment_sum(
        tf.cast(candidate, tf.int32), segment, batch * (length + 1)),
        [batch, length + 1])[:, :length]
    # A word's priority is its first piece's draw; no word sorts last.
    word_priority = tf.where(starts, priorities, 2.0)
    start_positions = tf.argsort(tf.where(starts, tf.range(length)[None, :],
                                          length), axis=1)
    priority_by_word = tf.gather(word_priority, start_positions,
                                 batch_dims=1)
    drawn_order = tf.argsort(priority_by_word, axis=1, stable=True)
    wanted = wanted_counts(input_mask, rule.masked_lm_prob, max_predictions)
    ordered_lengths = tf.gather(word_lengths, drawn_order, batch_dims=1)
    if rule.whole_word_mask:
        taken = _take_greedily(ordered_lengths, wanted)
    else:
        # Every word is one token: the first `wanted` words are taken.
        taken = (tf.range(length)[None, :] < wanted[:, None]) & (
            ordered_lengths > 0)
    taken_word = tf.gather(taken, tf.argsort(drawn_order, axis=1),
                           batch_dims=1)
    taken_word = tf.pad(taken_word, [[0, 0], [0, 1]])  # the spare slot
    return tf.gather(taken_word, word, batch_dims=1) & candidate


def replace_tokens(ids, chosen, kind_draws, token_draws, rule):
    """80 % of the chosen tokens -> [MASK], 10 % -> a random ordinary
    token, 10 % unchanged."""
    ordinary = tf.constant(rule.ordinary_ids, tf.int32)
    pick = tf.minimum(tf.cast(token_draws * len(rule.ordinary_ids),
                              tf.int32), len(rule.ordinary_ids) - 1)
    random_ids = tf.gather(ordinary, pick)
    replaced = tf.where(kind_draws < 0.8, rule.mask_id,
                        tf.where(kind_draws >= 0.9, random_ids, ids))
    return tf.where(chosen, replaced, ids)


def prediction_features(ids, chosen, max_predictions):
    """masked_lm_positions (ascending), masked_lm_ids (the originals) and
    masked_lm_weights of the chosen positions, padded to max_predictions
    with zeros."""
    length = tf.shape(ids)[1]
    index = tf.range(length)[None, :]
    # Chosen positions first, in order; the rest after them.
    order_key = tf.where(chosen, index, length + index)
    positions = tf.sort(order_key, axis=1)[:, :max_predictions]
    real = positions < length
    positions = tf.where(real, positions, 0)
    originals = tf.where(real, tf.gather(ids, positions, batch_dims=1), 0)
    return positions, originals, tf.cast(real, tf.float32)


def mask_batch(features, tags, seed, rule, max_predictions):
    """A parsed batch with its masks drawn afresh (see the module's doc)."""
    ids = restore_tokens(features)
    length = ids.shape[1]
    draws = example_draws(tags, seed, length)
    chosen = choose_positions(ids, features["input_mask"], draws[:, 0],
                              rule, max_predictions)
    result = dict(features)
    result["input_ids"] = replace_tokens(ids, chosen, draws[:, 1],
                                         draws[:, 2], rule)
    (result["masked_lm_positions"], result["masked_lm_ids"],
     result["masked_lm_weights"]) = prediction_features(
        ids, chosen, max_predictions)
    return result

