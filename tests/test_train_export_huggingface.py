"""`train.export --format=huggingface`: transformers' names and layouts
(checked against tests/references/hf_bert_layout.py, written from
transformers' modeling_bert.py), the values of the Google export, KerasHub
loading and fine-tuning it, and the way back through --init_checkpoint."""

import importlib.util
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.references import hf_bert_layout
from tests.support import train_testing
from train import InputError, PretrainConfig, run_pretraining
from train.data import tokenization
from train.interop import exports
from train.interop import init_checkpoints
from train.model import bert

BERT_CONFIG = train_testing.SMALL_BERT_CONFIG
SEQ, PREDICTIONS = 32, 5
HF_FILES = {"config.json", "model.safetensors", "vocab.txt",
            "tokenizer_config.json", "special_tokens_map.json"}
HAS_KERAS_HUB = bool(importlib.util.find_spec("keras_hub")
                     and importlib.util.find_spec("tensorflow_text"))
needs_keras_hub = pytest.mark.skipif(
    not HAS_KERAS_HUB,
    reason="needs keras-hub and tensorflow-text of TensorFlow's minor "
           "version (./dev.sh setup installs them)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 4 updates with its end-of-run SavedModel, exported as a
    Google folder and a Hugging Face folder."""
    root = tmp_path_factory.mktemp("huggingface")
    made = train_testing.small_run_files(root, eval_documents=30)
    common = dict(max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS,
                  bert_config_file=made["bert_config_file"],
                  vocab_file=made["vocab"])
    model_dir = str(root / "run")
    trained = run_pretraining(PretrainConfig(
        model_dir=model_dir, train_files=made["files"], num_train_steps=4,
        log_steps=4, train_batch_size=8, warmup_steps=1, shuffle_buffer=100,
        export_dir=str(root / "saved_model"), **common))
    return {"root": root, "model_dir": model_dir, "common": common,
            "model": trained["trainer"].model,
            "saved_model": trained["export_dir"],
            "google": exports.export_google_checkpoint(model_dir,
                                                      str(root / "google")),
            "hf": exports.export_huggingface(model_dir, str(root / "hf")),
            "vocab": made["vocab"], "vocab_size": made["vocab_size"],
            "files": made["files"], "eval_files": tuple(made["eval_files"])}


def _safetensors(path):
    import safetensors.numpy
    return safetensors.numpy.load_file(path)


def _google_values(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()}


def test_folder_has_transformers_names_shapes_and_config(run):
    hf = run["hf"]
    assert set(os.listdir(hf)) == HF_FILES
    config = json.load(open(os.path.join(hf, "config.json")))
    assert config["model_type"] == "bert"
    assert config["architectures"] == ["BertForPreTraining"]
    # Google's gelu is the tanh form: transformers' "gelu_new".
    assert config["hidden_act"] == "gelu_new"
    assert config["layer_norm_eps"] == 1e-12
    for key, value in dict(BERT_CONFIG, vocab_size=run["vocab_size"]).items():
        if key != "hidden_act":
            assert config[key] == value, key
    values = _safetensors(os.path.join(hf, "model.safetensors"))
    assert {name: value.shape for name, value in values.items()} == \
        hf_bert_layout.state_dict_shapes(config)
    assert {value.dtype for value in values.values()} == {
        np.dtype(np.float32)}
    from safetensors import safe_open
    with safe_open(os.path.join(hf, "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert open(os.path.join(hf, "vocab.txt")).read() == open(
        run["vocab"]).read()
    tokens = open(run["vocab"]).read().splitlines()
    assert config["pad_token_id"] == tokens.index("[PAD]")
    tokenizer = json.load(open(os.path.join(hf, "tokenizer_config.json")))
    assert tokenizer["do_lower_case"] is True
    assert tokenizer["tokenizer_class"] == "BertTokenizer"
    special = json.load(open(os.path.join(hf, "special_tokens_map.json")))
    assert all(token in tokens for token in special.values())


def test_values_are_the_google_exports_in_transformers_layout(run):
    """The reference's own mapping back to Google's names gives exactly the
    Google folder's arrays (which test_train_export checks against a NumPy
    BERT), so every transposition and name is right."""
    values = _safetensors(os.path.join(run["hf"], "model.safetensors"))
    back = hf_bert_layout.to_google(values)
    google = _google_values(os.path.join(run["google"], "bert_model.ckpt"))
    assert back.keys() == google.keys()
    for name, value in google.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_init_checkpoint_from_the_folder_is_exact(run):
    model = bert.BertPretrainer(bert.BertConfig.from_dict(
        dict(BERT_CONFIG, vocab_size=run["vocab_size"])))
    model.build_for(SEQ, PREDICTIONS)
    assert init_checkpoints.init_from_checkpoint(model, run["hf"])[0] == len(
        run["model"].weights)
    for a, b in zip(model.weights, run["model"].weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_continue_pretraining_from_the_folder(run, tmp_path):
    """The folder alone starts a run: its config.json as
    --bert_config_file, its vocab.txt, its weights as --init_checkpoint.
    Evaluated, it reports exactly what the original run's checkpoint
    reports; trained, the run's own export reads back into its model."""
    hf = run["hf"]
    bert_config = bert.BertConfig.from_json_file(
        os.path.join(hf, "config.json"))
    assert bert_config == bert.BertConfig.from_dict(
        dict(BERT_CONFIG, vocab_size=run["vocab_size"]))
    from_folder = dict(
        max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS,
        bert_config_file=os.path.join(hf, "config.json"),
        vocab_file=os.path.join(hf, "vocab.txt"), export_dir="none")
    evaluate = dict(mode="eval", eval_files=run["eval_files"],
                    eval_batch_size=16)
    original = run_pretraining(PretrainConfig(
        **dict(run["common"], model_dir=run["model_dir"], **evaluate)))
    loaded = run_pretraining(PretrainConfig(
        model_dir=str(tmp_path / "eval"), init_checkpoint=hf,
        **from_folder, **evaluate))
    for key in ("loss", "masked_lm_loss", "masked_lm_accuracy",
                "next_sentence_loss", "next_sentence_accuracy", "examples"):
        assert loaded["eval"][key] == original["eval"][key], key

    model_dir = str(tmp_path / "continued")
    result = run_pretraining(PretrainConfig(
        model_dir=model_dir, train_files=run["files"], num_train_steps=2,
        log_steps=1, train_batch_size=8, warmup_steps=0,
        learning_rate=1e-4, init_checkpoint=hf, **from_folder))
    model = result["trainer"].model
    changes = [np.abs(a.numpy() - b.numpy()).max()
               for a, b in zip(model.weights, run["model"].weights)]
    # Two LAMB updates of lr 1e-4 from the folder's weights (a model from
    # a fresh initialisation would differ by ~0.02 everywhere).
    assert 0 < max(changes) < 1e-3, changes
    again = _model(run["vocab_size"])
    init_checkpoints.init_from_checkpoint(
        again, exports.export_huggingface(model_dir, str(tmp_path / "hf2")))
    for a, b in zip(again.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _copy(folder, destination):
    shutil.copytree(folder, destination)
    return str(destination)


def _model(vocab_size, **changes):
    model = bert.BertPretrainer(bert.BertConfig.from_dict(
        dict(BERT_CONFIG, vocab_size=vocab_size, **changes)))
    model.build_for(SEQ, PREDICTIONS)
    return model


def test_a_folder_that_does_not_fit_is_refused_before_loading(run,
                                                              tmp_path):
    model = _model(run["vocab_size"])
    before = [v.numpy().copy() for v in model.weights]

    other_act = _copy(run["hf"], tmp_path / "act")
    config = json.load(open(os.path.join(other_act, "config.json")))
    config["hidden_act"] = "gelu"  # transformers' exact erf form
    json.dump(config, open(os.path.join(other_act, "config.json"), "w"))
    with pytest.raises(ValueError, match="hidden_act 'gelu_exact'"):
        init_checkpoints.init_from_checkpoint(model, other_act)

    fewer_layers = _copy(run["hf"], tmp_path / "layers")
    import safetensors.numpy
    path = os.path.join(fewer_layers, "model.safetensors")
    values = safetensors.numpy.load_file(path)
    values = {k: v for k, v in values.items() if ".layer.1." not in k}
    safetensors.numpy.save_file(values, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"Hugging Face checkpoint .* 16 of "
                                         r"\d+ variables are missing"):
        init_checkpoints.init_from_checkpoint(model, fewer_layers)

    truncated = _copy(run["hf"], tmp_path / "truncated")
    path = os.path.join(truncated, "model.safetensors")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="Cannot read .*model.safetensors"):
        init_checkpoints.init_from_checkpoint(model, truncated)

    not_bert = _copy(run["hf"], tmp_path / "roberta")
    config = json.load(open(os.path.join(not_bert, "config.json")))
    config["model_type"] = "roberta"
    json.dump(config, open(os.path.join(not_bert, "config.json"), "w"))
    with pytest.raises(ValueError, match="model_type is 'roberta'"):
        init_checkpoints.init_from_checkpoint(model, not_bert)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)

    with pytest.raises(InputError, match="--init_checkpoint: .*roberta"):
        run_pretraining(PretrainConfig(
            model_dir=str(tmp_path / "never"), train_files=run["files"],
            num_train_steps=1, init_checkpoint=not_bert,
            **run["common"]))
    assert not (tmp_path / "never").exists()


def test_older_layer_norm_names_and_decoder_bias_read(run, tmp_path):
    """Checkpoints saved by older transformers name LayerNorm parameters
    gamma/beta and may keep the (tied) decoder bias and weight."""
    old = _copy(run["hf"], tmp_path / "old")
    import safetensors.numpy
    path = os.path.join(old, "model.safetensors")
    values = safetensors.numpy.load_file(path)
    renamed = {}
    for name, value in values.items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta")
        renamed[name] = value
    renamed["cls.predictions.decoder.bias"] = renamed.pop(
        "cls.predictions.bias")
    renamed["cls.predictions.decoder.weight"] = values[
        "bert.embeddings.word_embeddings.weight"]
    safetensors.numpy.save_file(renamed, path, metadata={"format": "pt"})
    model = _model(run["vocab_size"])
    init_checkpoints.init_from_checkpoint(model, old)
    for a, b in zip(model.weights, run["model"].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    half = {name: value.astype(np.float16) for name, value in values.items()}
    safetensors.numpy.save_file(half, path, metadata={"format": "pt"})
    init_checkpoints.init_from_checkpoint(model, old)
    for a, b in zip(model.weights, run["model"].weights):
        assert a.dtype == "float32"
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3,
                                   atol=1e-4)


def test_mixed_precision_run_exports_float32(run, tmp_path):
    model_dir = str(tmp_path / "bf16")
    run_pretraining(PretrainConfig(
        **dict(run["common"], model_dir=model_dir, train_files=run["files"],
               num_train_steps=1, log_steps=1, train_batch_size=4,
               warmup_steps=0, mixed_precision="mixed_bfloat16",
               export_dir="none")))
    # run_pretraining gives the caller's global policy back.
    assert keras.mixed_precision.global_policy().name == "float32"
    out = exports.export_huggingface(model_dir, str(tmp_path / "out"))
    values = _safetensors(os.path.join(out, "model.safetensors"))
    assert {v.dtype for v in values.values()} == {np.dtype(np.float32)}


def test_command_line_is_quiet(run, tmp_path):
    out = tmp_path / "cli"
    result = train_testing.run(
        ["-m", "train.export", f"--model_dir={run['model_dir']}",
         "--format=huggingface", f"--output_dir={out}"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(os.listdir(out)) == HF_FILES
    assert result.stdout.strip().splitlines() == [
        f"Exported {run['model_dir']} (huggingface) to {out}"]
    # No INFO lines of TensorFlow's or absl's: only warnings may remain.
    info = [line for line in result.stderr.splitlines()
            if line.startswith(("I0", "INFO:", "I1"))]
    assert not info, result.stderr[-2000:]


@needs_keras_hub
def test_keras_hub_backbone_computes_what_the_saved_model_computes(run):
    import keras_hub
    backbone = keras_hub.models.BertBackbone.from_preset(run["hf"])
    ids, mask, types = train_testing.encoder_inputs(run["vocab_size"],
                                                     batch=4, seed=3)
    theirs = backbone({"token_ids": ids, "segment_ids": types,
                       "padding_mask": mask})
    encoder = tf.saved_model.load(run["saved_model"])
    ours = encoder({"input_word_ids": ids, "input_mask": mask,
                    "input_type_ids": types}, training=False)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs[key]),
                                   ours[key].numpy(), atol=1e-5, rtol=0,
                                   err_msg=key)


@needs_keras_hub
def test_keras_hub_tokenizer_matches_ours(run):
    import keras_hub
    tokenizer = keras_hub.models.BertTokenizer.from_preset(run["hf"])
    vocab = tokenization.read_vocab(run["vocab"])
    ours = tokenization.BertTokenizer(vocab, lower_case=True)
    text = "The Quick brown fox jumps over the lazy dog, again."
    expected = [i for word in ours.tokenize(text) for i in word]
    assert keras.ops.convert_to_numpy(tokenizer(text)).tolist() == expected


@needs_keras_hub
def test_keras_hub_classifier_fine_tunes(run):
    import keras_hub
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        run["hf"], num_classes=2, preprocessor=None)
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    ids = rng.integers(8, run["vocab_size"], (16, 10)).astype(np.int32)
    labels = np.arange(16) % 2
    ids[labels == 1, 3] = 7  # the class: whether token 7 occurs
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids),
         "padding_mask": np.ones_like(ids)}
    backbone = classifier.backbone.trainable_weights
    assert len(backbone) == 2 * 16 + 5 + 2
    before = [keras.ops.convert_to_numpy(v).copy() for v in backbone]
    losses = [classifier.evaluate(x, labels, verbose=0)]
    for _ in range(3):
        classifier.fit(x, labels, batch_size=16, epochs=1, verbose=0)
        losses.append(classifier.evaluate(x, labels, verbose=0))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    for variable, value in zip(backbone, before):
        assert not np.array_equal(keras.ops.convert_to_numpy(variable),
                                  value), variable.path


@needs_keras_hub
def test_keras_hub_classifier_with_its_preprocessor_reads_text(run):
    """The README's recipe: the preset's own preprocessor (our vocab.txt,
    lower-casing) turns strings into the backbone's inputs."""
    import keras_hub
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        run["hf"], sequence_length=SEQ)
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        run["hf"], num_classes=2, preprocessor=preprocessor)
    texts = np.array(["the first sentence of a document",
                      "Another, quite different SENTENCE."] * 4)
    labels = np.array([0, 1] * 4)
    history = classifier.fit(texts, labels, batch_size=8, epochs=2,
                             verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert classifier.predict(texts[:2], verbose=0).shape == (2, 2)
    features = classifier.preprocessor(texts[:1])
    ids = keras.ops.convert_to_numpy(features["token_ids"])[0]
    vocab = tokenization.read_vocab(run["vocab"])
    ours = tokenization.BertTokenizer(vocab, lower_case=True)
    words = [i for word in ours.tokenize(str(texts[0])) for i in word]
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    assert ids[:len(words) + 2].tolist() == [cls_id] + words + [sep_id]
