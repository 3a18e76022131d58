"""Which TPU --strategy=tpu connects to, checked without a TPU: the
arguments TensorFlow's TPUClusterResolver receives (it is replaced by a
recorder that refuses, as an unreachable TPU would), and the errors of a
run that names no TPU or locates one it does not name."""

import os
import time

import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from tf_lamb import distribute
from train import flags as flags_lib
from train import InputError
from train.runtime import cluster

SMALL = ["--max_seq_length=32", "--max_predictions_per_seq=5",
         "--train_batch_size=8", "--warmup_steps=1", "--num_train_steps=2"]
MISSING = ("--strategy=tpu needs --tpu: 'local' (on a Cloud TPU VM: its own "
           "TPU), the TPU's name (a pod slice, or a TPU VM elsewhere; with "
           "--tpu_zone and --gcp_project when not this VM's) or "
           "grpc://host:port; or set the TPU_NAME environment variable")


@pytest.fixture
def resolver_calls(monkeypatch):
    """The keyword arguments of each TPUClusterResolver(...) made; the
    resolver raises, so no connection is tried."""
    calls = []

    class Recorder:
        def __init__(self, **kwargs):
            calls.append(kwargs)
            raise RuntimeError("recorded, not connected")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver",
                        Recorder)
    monkeypatch.delenv("TPU_NAME", raising=False)
    return calls


def test_a_tpu_name_goes_to_the_resolver_with_its_zone_and_project(
        resolver_calls):
    with pytest.raises(ValueError) as error:
        distribute.make_strategy("tpu", tpu="bert-pod", tpu_zone="us-east5-a",
                                 gcp_project="my-project")
    assert resolver_calls == [dict(tpu="bert-pod", zone="us-east5-a",
                                   project="my-project")]
    assert str(error.value) == (
        "No TPU reachable at bert-pod (zone us-east5-a) (project my-project):"
        " RuntimeError: recorded, not connected")


def test_local_and_the_environment_need_no_zone(resolver_calls, monkeypatch):
    with pytest.raises(ValueError, match="^No TPU reachable at local: "):
        distribute.make_strategy("tpu", tpu="local")
    monkeypatch.setenv("TPU_NAME", "from-env")
    with pytest.raises(ValueError, match="^No TPU reachable at from-env: "):
        distribute.make_strategy("tpu")
    # The flag wins over the variable.
    with pytest.raises(ValueError, match="^No TPU reachable at local: "):
        distribute.make_strategy("tpu", tpu="local")
    assert resolver_calls == [
        dict(tpu="local", zone=None, project=None),
        dict(tpu="from-env", zone=None, project=None),
        dict(tpu="local", zone=None, project=None)]


def test_no_tpu_named_says_what_to_pass(resolver_calls):
    with pytest.raises(ValueError) as error:
        distribute.make_strategy("tpu")
    assert str(error.value) == MISSING
    with pytest.raises(ValueError, match="locate a TPU given by name; "
                                         "--tpu=local needs neither"):
        distribute.make_strategy("tpu", tpu="local", tpu_zone="us-east5-a")
    assert resolver_calls == []


def test_the_command_line_without_a_tpu_fails_in_one_line(resolver_calls,
                                                          tmp_path):
    model_dir = tmp_path / "never_created"
    with pytest.raises(InputError) as error:
        _testing.run_flags(SMALL + ["--strategy=tpu",
                                    f"--model_dir={model_dir}"])
    assert str(error.value) == MISSING
    assert resolver_calls == []
    assert not model_dir.exists()


def test_a_refused_grpc_address_fails_fast(resolver_calls, tmp_path):
    port, = _testing.free_ports(1)
    model_dir = tmp_path / "never_created"
    started = time.monotonic()
    with pytest.raises(InputError, match=f"^No TPU reachable at grpc://"
                                         f"127.0.0.1:{port}: "):
        _testing.run_flags(SMALL + ["--strategy=tpu",
                                    f"--tpu=grpc://127.0.0.1:{port}",
                                    f"--model_dir={model_dir}"])
    assert time.monotonic() - started < 10
    assert resolver_calls == []
    assert not model_dir.exists()


def test_flags_reach_the_resolver(resolver_calls, tmp_path):
    values = _testing.parse_flags(SMALL + [
        "--strategy=tpu", "--tpu=bert-pod", "--tpu_zone=europe-west4-a",
        "--gcp_project=my-project", f"--model_dir={tmp_path}"])
    config = flags_lib.config_from_flags(values)
    assert (config.tpu, config.tpu_zone, config.gcp_project) == (
        "bert-pod", "europe-west4-a", "my-project")
    replay = flags_lib.flags_file(config, values)
    assert "--tpu_zone=europe-west4-a\n" in replay
    assert "--gcp_project=my-project\n" in replay
    with pytest.raises(InputError, match="^No TPU reachable at bert-pod "):
        cluster.strategy_for(config)
    assert resolver_calls == [dict(tpu="bert-pod", zone="europe-west4-a",
                                   project="my-project")]


@pytest.mark.parametrize("args, match", [
    (["--tpu_zone=us-east5-a"],
     "^--tpu_zone needs --strategy=tpu and --tpu=<TPU name> "
     r"\(got --strategy=one_device\)$"),
    (["--strategy=mirrored", "--gcp_project=p"],
     "^--gcp_project needs --strategy=tpu"),
    (["--strategy=tpu", "--tpu=local", "--tpu_zone=us-east5-a",
      "--gcp_project=p"],
     "^--tpu_zone and --gcp_project locate a TPU given by name; --tpu=local "
     "needs neither$"),
    (["--strategy=tpu", "--tpu=grpc://10.0.0.2:8470", "--gcp_project=p"],
     "^--gcp_project locates a TPU given by name; "),
])
def test_a_zone_or_project_without_a_tpu_name(args, match, resolver_calls,
                                                tmp_path):
    model_dir = tmp_path / "never_created"
    with pytest.raises(InputError, match=match):
        _testing.run_flags(SMALL + args + [f"--model_dir={model_dir}"])
    assert resolver_calls == []
    assert not os.path.exists(model_dir)
