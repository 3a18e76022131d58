"""Build a `tf.distribute.Strategy` from a name, for command-line programs."""

import itertools
import os
import socket

import tensorflow as tf

STRATEGIES = ("one_device", "mirrored", "multi_worker", "tpu")

# Every MirroredStrategy numbers its collectives from the same group and
# instance keys, and TensorFlow caches a collective's shape by those keys for
# the life of the process: a second strategy whose all-reduce number k has
# another shape than the first strategy's fails ("Shape mismatch in the
# collective instance 100", TensorFlow issue 62790). That happens to any
# program that trains twice in one process (a sweep, a notebook, a test
# suite), so each strategy made here gets group keys of its own.
_KEYS_PER_STRATEGY = 100_000
_strategy_numbers = itertools.count(1)


def _mirrored_strategy(devices):
    strategy_class = tf.distribute.MirroredStrategy
    shared_base = strategy_class._collective_key_base
    strategy_class._collective_key_base = (
        _KEYS_PER_STRATEGY * next(_strategy_numbers))
    try:
        return strategy_class(devices)
    finally:
        strategy_class._collective_key_base = shared_base


def make_strategy(name, tpu=None, num_gpus=None, tpu_zone=None,
                  gcp_project=None):
    """Returns the strategy called `name`.

    Args:
        name: One of `one_device`, `mirrored`, `multi_worker`, `tpu`.
        tpu: For `tpu`, which TPU (see `TPU_CHOICES`): `local` (the TPU of
            the Cloud TPU VM this runs on), a TPU's name (looked up with the
            Cloud TPU API; a pod slice is named this way), or a
            `grpc://host:port` address. When empty, the `TPU_NAME`
            environment variable.
        num_gpus: For `one_device` and `mirrored`: how many GPUs to use
            (0 means the CPU). None uses every visible GPU (mirrored) or the
            first one (one_device), and the CPU when there is none.
        tpu_zone, gcp_project: For a TPU given by name: its zone and Google
            Cloud project, when they are not those of the VM this runs on
            (which the resolver asks the VM's metadata server for).

    Raises:
        ValueError: an unknown name, a bad `num_gpus`, no TPU named, a zone
            or project without a TPU name, or a TPU that cannot be reached
            (the message names the address tried).
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy {name!r}; expected one of {list(STRATEGIES)}")
    # These two must come first: listing devices starts TensorFlow's runtime,
    # after which collective ops (multi_worker) can no longer be configured.
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy 'multi_worker' needs the TF_CONFIG environment "
                "variable (cluster and task of this worker)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu, tpu_zone, gcp_project)
    gpus = tf.config.list_logical_devices("GPU")
    if num_gpus is not None and not 0 <= num_gpus <= len(gpus):
        raise ValueError(
            f"num_gpus={num_gpus} but {len(gpus)} GPU(s) are visible")
    if name == "one_device":
        device = "/gpu:0" if gpus and num_gpus != 0 else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        devices = [d.name for d in gpus[:num_gpus]] if gpus else []
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return _mirrored_strategy(devices)


def check_tpu_address(address, timeout=10.0):
    """Fails fast when a `grpc://host:port` TPU address refuses connections.

    TensorFlow's own connection attempt would wait for minutes.
    """
    if not address.startswith("grpc://"):
        return
    host, _, port = address[len("grpc://"):].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"TPU address {address!r} is not grpc://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)),
                                 timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"No TPU reachable at {address}: {error}") from None


# What --tpu takes; the one-line error for a run that names no TPU.
TPU_CHOICES = ("'local' (on a Cloud TPU VM: its own TPU), the TPU's name "
               "(a pod slice, or a TPU VM elsewhere; with --tpu_zone and "
               "--gcp_project when not this VM's) or grpc://host:port")
MISSING_TPU = (f"--strategy=tpu needs --tpu: {TPU_CHOICES}; or set the "
               f"TPU_NAME environment variable")


def tpu_address(tpu, environ=None):
    """The TPU a `tpu` strategy connects to: `tpu`, else `TPU_NAME`;
    ValueError (MISSING_TPU) when neither names one.

    TensorFlow's resolver would fall back to the same variable and then
    fail with "Please provide a TPU Name to connect to", which says
    neither how to name one nor that `local` exists.
    """
    environ = os.environ if environ is None else environ
    address = (tpu or environ.get("TPU_NAME", "")).strip()
    if not address:
        raise ValueError(MISSING_TPU)
    return address


def is_tpu_name(address):
    """Whether `address` names a TPU to look up with the Cloud TPU API (the
    only kind a zone and project apply to)."""
    return address != "local" and not address.startswith("grpc://")


def _tpu_strategy(tpu, zone=None, project=None):
    address = tpu_address(tpu)
    if (zone or project) and not is_tpu_name(address):
        raise ValueError(
            f"--tpu_zone and --gcp_project locate a TPU given by name; "
            f"--tpu={address} needs neither")
    check_tpu_address(address)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=address, zone=zone or None, project=project or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    # A TPU name is looked up over the network (URLError, HTTPError, ...).
    except Exception as error:  # pylint: disable=broad-except
        where = address + "".join(
            f" ({label} {value})" for label, value in (
                ("zone", zone), ("project", project)) if value)
        raise ValueError(f"No TPU reachable at {where}: "
                         f"{type(error).__name__}: {error}") from None
    return tf.distribute.TPUStrategy(resolver)
