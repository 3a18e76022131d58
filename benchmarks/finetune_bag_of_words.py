"""The fine-tuning benchmark's baseline (benchmarks.finetune): multinomial
logistic regression on token counts, in NumPy. For a sentence pair the
counts of each segment are separate features, so it can learn which words
open a docstring and which follow."""

import time

import numpy as np


def count_features(inputs, vocab_size, per_segment):
    """[examples, vocab_size] token counts (special tokens and padding
    included: they are the same for every example), or with `per_segment`
    [examples, 2 * vocab_size]: segment A's counts, then segment B's."""
    ids = inputs["input_word_ids"]
    mask = inputs["input_mask"].astype(bool)
    segment = inputs["input_type_ids"] if per_segment else np.zeros_like(ids)
    width = vocab_size * (2 if per_segment else 1)
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    counts = np.zeros((len(ids), width), np.float32)
    np.add.at(counts, (rows[mask], (ids + segment * vocab_size)[mask]), 1.0)
    return counts


def fit_bag_of_words(x, y, classes, seed, config):
    """Weights and biases of multinomial logistic regression on `x`: Adam
    on the mean cross-entropy plus bow_l2 times the squared weights, for
    bow_epochs passes of batch_size examples shuffled by `seed`."""
    rng = np.random.default_rng(seed)
    # Features on a log scale, so that a word repeated ten times does not
    # weigh ten times one said once.
    x = np.log1p(x)
    params = [np.zeros((x.shape[1], classes), np.float32),
              np.zeros(classes, np.float32)]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    step = 0
    for _ in range(config.bow_epochs):
        for batch in np.array_split(rng.permutation(len(y)),
                                    max(1, len(y) // config.batch_size)):
            step += 1
            probabilities = _softmax(x[batch] @ params[0] + params[1])
            probabilities[np.arange(len(batch)), y[batch]] -= 1.0
            probabilities /= len(batch)
            grads = [x[batch].T @ probabilities + 2 * config.bow_l2
                     * params[0], probabilities.sum(axis=0)]
            for p, g, m in zip(params, grads, moments):
                m[0] = 0.9 * m[0] + 0.1 * g
                m[1] = 0.999 * m[1] + 0.001 * g * g
                p -= config.bow_learning_rate * (m[0] / (1 - 0.9 ** step)) / (
                    np.sqrt(m[1] / (1 - 0.999 ** step)) + 1e-8)
    return params


def bag_of_words_accuracy(params, x, y):
    predictions = np.argmax(np.log1p(x) @ params[0] + params[1], axis=1)
    return float(np.mean(predictions == y))


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def run_bag_of_words(task, vocab_size, config, seed):
    started = time.time()
    train_x = count_features(task.train_x, vocab_size,
                             task.per_segment_counts)
    test_x = count_features(task.test_x, vocab_size, task.per_segment_counts)
    params = fit_bag_of_words(train_x, task.train_y, len(task.classes), seed,
                              config)
    return {"held_out_accuracy": bag_of_words_accuracy(params, test_x,
                                                       task.test_y),
            "train_accuracy": bag_of_words_accuracy(params, train_x,
                                                    task.train_y),
            "seconds": time.time() - started}
