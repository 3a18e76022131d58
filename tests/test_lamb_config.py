"""tf_lamb.Lamb's settings: names, the exclusions from weight decay and
layer adaptation, get_config and Keras serialization, bad input, and
attributes changed between steps."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tf_lamb import Lamb


# -- names, exclusions, config ------------------------------------------------

def test_name_scopes_slot_variables():
    w = keras.Variable(np.ones(3, np.float32), name="kernel")
    optimizer = Lamb(name="my_lamb")
    optimizer.build([w])
    assert optimizer.name == "my_lamb"
    assert all(v.path.startswith("my_lamb/") for v in optimizer.variables)
    assert Lamb().name == "lamb"


def test_exclusions_search_the_variable_path():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="attention_output")(inputs)
    outputs = keras.layers.LayerNormalization(name="LayerNorm")(hidden)
    model = keras.Model(inputs, outputs)
    optimizer = Lamb(weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["LayerNorm", "bias"])
    optimizer.exclude_from_layer_adaptation(var_names=["attention_output/b"])
    decayed = {v.path: optimizer._use_weight_decay(v)
               for v in model.trainable_variables}
    adapted = {v.path: optimizer._use_layer_adaptation(v)
               for v in model.trainable_variables}
    assert decayed == {"attention_output/kernel": True,
                       "attention_output/bias": False,
                       "LayerNorm/gamma": False, "LayerNorm/beta": False}
    assert adapted == {"attention_output/kernel": True,
                       "attention_output/bias": False,
                       "LayerNorm/gamma": True, "LayerNorm/beta": True}
    # var_list exclusion, by object.
    optimizer.exclude_from_layer_adaptation(
        var_list=[model.trainable_variables[0]])
    assert not optimizer._use_layer_adaptation(model.trainable_variables[0])


def test_constructor_exclusions_as_in_tf_addons():
    optimizer = Lamb(weight_decay=0.01,
                     exclude_from_weight_decay=["bias", "LayerNorm"])
    config = optimizer.get_config()
    assert config["exclude_from_weight_decay"] == ["bias", "LayerNorm"]
    # TF Addons / Model Garden: the adaptation list defaults to this one.
    assert config["exclude_from_layer_adaptation"] == ["bias", "LayerNorm"]
    both = Lamb(exclude_from_weight_decay=["bias"],
                exclude_from_layer_adaptation=[])
    assert both.get_config()["exclude_from_layer_adaptation"] == []


def test_get_config_round_trip_and_keras_serialization():
    schedule = keras.optimizers.schedules.PolynomialDecay(1e-3, 100, 1e-5)
    optimizer = Lamb(learning_rate=schedule, beta_1=0.8, beta_2=0.98,
                     epsilon=1e-6, weight_decay=0.01, global_clipnorm=1.0,
                     use_ema=True, ema_momentum=0.9,
                     ema_overwrite_frequency=5, loss_scale_factor=8.0,
                     gradient_accumulation_steps=4, name="pretrain_lamb",
                     max_trust_ratio=10.0, bias_correction=False,
                     jit_compile=False,
                     exclude_from_weight_decay=["LayerNorm", "bias"],
                     exclude_from_layer_adaptation=["LayerNorm"])
    config = optimizer.get_config()
    restored = Lamb.from_config(config)
    assert restored.get_config() == config
    via_keras = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer))
    assert isinstance(via_keras, Lamb)
    assert via_keras.get_config() == config
    for key, value in {"beta_1": 0.8, "epsilon": 1e-6, "max_trust_ratio": 10.0,
                       "bias_correction": False, "jit_compile": False,
                       "gradient_accumulation_steps": 4}.items():
        assert config[key] == value


# -- bad input ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs,names", [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"beta_1": 1.0}, "beta_1"),
    ({"beta_1": -0.1}, "beta_1"),
    ({"beta_2": 1.5}, "beta_2"),
    ({"beta_2": tf.constant(1.0)}, "beta_2"),
    ({"epsilon": -1e-7}, "epsilon"),
    ({"weight_decay": -0.01}, "weight_decay"),
    ({"max_trust_ratio": 0.0}, "max_trust_ratio"),
    ({"max_trust_ratio": -1.0}, "max_trust_ratio"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"gradient_accumulation_steps": 2.5}, "gradient_accumulation_steps"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "clipnorm"),
    ({"clipvalue": 1.0, "clipnorm": 1.0}, "clipvalue"),
    ({"clipnorm": -1.0}, "clipnorm"),
    ({"ema_momentum": 1.5, "use_ema": True}, "ema_momentum"),
    ({"ema_overwrite_frequency": 0, "use_ema": True},
     "ema_overwrite_frequency"),
    ({"loss_scale_factor": 0.0}, "loss_scale_factor"),
    ({"exclude_from_weight_decay": "bias"}, "exclude_from_weight_decay"),
    ({"exclude_from_layer_adaptation": ["("]},
     "exclude_from_layer_adaptation"),
    ({"learnig_rate": 0.1}, "learnig_rate"),
])
def test_bad_input_raises_value_error_naming_it(kwargs, names):
    with pytest.raises(ValueError, match=names):
        Lamb(**kwargs)


def test_bad_exclusion_pattern_in_method():
    optimizer = Lamb()
    with pytest.raises(ValueError, match="regular expression"):
        optimizer.exclude_from_weight_decay(var_names=["[unclosed"])


def test_a_variable_learning_rate_is_refused_and_a_callable_honoured():
    rate = keras.Variable(0.05)
    with pytest.raises(ValueError, match="learning_rate` must not be a var"):
        Lamb(learning_rate=rate)
    w = keras.Variable(np.array([1.0, 2.0], np.float32))
    optimizer = Lamb(learning_rate=lambda: rate)
    optimizer.apply_gradients([(tf.constant([0.1, 0.2]), w)])
    moved = w.numpy().copy()
    assert not np.array_equal(moved, [1.0, 2.0])
    rate.assign(0.0)
    optimizer.apply_gradients([(tf.constant([0.1, 0.2]), w)])
    np.testing.assert_array_equal(w.numpy(), moved)


# -- attributes changed between steps -----------------------------------------

@pytest.mark.parametrize("attribute, value", [
    ("epsilon", 1.0), ("weight_decay", 0.5), ("max_trust_ratio", 0.1),
    ("bias_correction", False)])
def test_attributes_set_after_the_first_step_take_effect(attribute, value,
                                                         device_kind):
    """As in Keras, an attribute set between eager steps applies from the
    next step: equal to the NumPy reference whose setting changes then."""
    from tests.references.numpy_lamb import NumpyLamb
    rng = np.random.default_rng(12)
    initial = rng.normal(size=(6, 4))
    w = keras.Variable(initial.astype(np.float32))
    optimizer = Lamb(0.05, weight_decay=0.01, epsilon=1e-6)
    reference = NumpyLamb([initial], weight_decay=[0.01], adapt=[True],
                          epsilon=1e-6)
    for step in range(3):
        if step == 1:
            setattr(optimizer, attribute, value)
            if attribute == "weight_decay":
                reference.weight_decay = [value]
            else:
                setattr(reference, attribute, value)
        g = rng.normal(size=(6, 4))
        optimizer.apply([tf.constant(g.astype(np.float32))], [w])
        reference.step([g.astype(np.float32).astype(np.float64)], 0.05, 0.9,
                       0.999)
    np.testing.assert_allclose(w.numpy(), reference.w[0], rtol=2e-5,
                               atol=1e-6)
    # Steps with unchanged attributes reuse the program.
    assert len(optimizer._programs) == 1
