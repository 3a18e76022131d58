"""LAMB written from the paper (You et al., ICLR 2020, Algorithm 2) in NumPy.

Independent of tf_lamb: float64, one variable at a time, no TensorFlow. The
tests drive it with the same gradients as the optimizer under test.
"""

import numpy as np


class NumpyLamb:
    """State and update of Algorithm 2 for a list of variables.

    `weight_decay` is a list (one lambda per variable, 0 where excluded),
    `adapt` a list of booleans (False: trust ratio fixed at 1).
    """

    def __init__(self, weights, weight_decay, adapt, epsilon=1e-7,
                 max_trust_ratio=None, bias_correction=True):
        self.w = [np.array(w, dtype=np.float64) for w in weights]
        self.m = [np.zeros_like(w) for w in self.w]
        self.v = [np.zeros_like(w) for w in self.w]
        self.weight_decay = weight_decay
        self.adapt = adapt
        self.epsilon = epsilon
        self.max_trust_ratio = max_trust_ratio
        self.bias_correction = bias_correction
        self.t = 0
        self.clipped = 0  # how often max_trust_ratio was binding
        self.trust_ratios = [1.0] * len(self.w)  # phi of the last step

    def step(self, grads, lr, beta_1, beta_2):
        self.t += 1
        for i, g in enumerate(grads):
            g = np.asarray(g, dtype=np.float64)
            self.m[i] = beta_1 * self.m[i] + (1 - beta_1) * g
            self.v[i] = beta_2 * self.v[i] + (1 - beta_2) * g * g
            if self.bias_correction:
                m_hat = self.m[i] / (1 - beta_1 ** self.t)
                v_hat = self.v[i] / (1 - beta_2 ** self.t)
            else:
                m_hat, v_hat = self.m[i], self.v[i]
            r = m_hat / (np.sqrt(v_hat) + self.epsilon)
            r = r + self.weight_decay[i] * self.w[i]
            w_norm = np.sqrt(np.sum(self.w[i] ** 2))
            r_norm = np.sqrt(np.sum(r ** 2))
            phi = w_norm / r_norm if (w_norm > 0 and r_norm > 0) else 1.0
            if not self.adapt[i]:
                phi = 1.0
            if self.max_trust_ratio is not None and phi > self.max_trust_ratio:
                phi = self.max_trust_ratio
                self.clipped += 1
            self.trust_ratios[i] = phi
            self.w[i] = self.w[i] - lr * phi * r


def clip_global_norm(grads, clip_norm):
    norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads))
    return [g * clip_norm / max(norm, clip_norm) for g in grads]


def clip_norm(grads, clip):
    return [g * clip / max(np.sqrt(np.sum(np.square(g, dtype=np.float64))),
                           clip) for g in grads]


def clip_value(grads, clip):
    return [np.clip(g, -clip, clip) for g in grads]


def max_relative_error(actual, expected):
    """max over variables of ||a - e||_inf / ||e||_inf (0/0 counts as 0)."""
    worst = 0.0
    for a, e in zip(actual, expected):
        a = np.asarray(a, np.float64)
        e = np.asarray(e, np.float64)
        diff = np.max(np.abs(a - e)) if a.size else 0.0
        scale = np.max(np.abs(e)) if e.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst
