"""The cluster a run trains on: the strategy its config names, made once
every other worker of a multi_worker cluster is up.

MultiWorkerMirroredStrategy waits for the other workers too, but inside
TensorFlow: silently, forever, and deaf to SIGTERM and SIGINT. Here the
wait is in Python (`wait_for_workers`), with a limit and a message.
(`tf_lamb.distribute.make_strategy` builds the strategy from its name;
this module adds what a command-line run needs around it.)
"""

import contextlib
import json
import os
import signal
import socket
import threading
import time

from tf_lamb import distribute
from train.runtime.errors import InputError
from train.runtime.signals import raising_on_signals


def strategy_for(config):
    """The strategy --strategy names; under multi_worker, once every other
    worker of TF_CONFIG's cluster is up (see wait_for_workers)."""
    multi_worker = config.strategy == "multi_worker"
    if multi_worker:
        wait_for_workers(config.worker_wait_seconds)
    try:
        strategy = distribute.make_strategy(
            config.strategy, tpu=config.tpu, num_gpus=config.num_gpus,
            tpu_zone=config.tpu_zone, gcp_project=config.gcp_project)
    except ValueError as error:
        raise InputError(str(error)) from None
    if multi_worker and (
            threading.current_thread() is threading.main_thread()):
        # TensorFlow's coordination service has just taken SIGTERM (for a
        # preemption notifier this program does not use), which would make
        # the process ignore it until training starts; give it back its
        # default, as docs/failures.md says SIGTERM before training ends
        # the process. Training installs its own handlers.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


# How often a waiting worker tries the others, and how long one try takes.
_PEER_POLL_SECONDS = 0.5
_PEER_CONNECT_SECONDS = 1.0


def _cluster_peers(environ):
    """(this worker's name, its address, {name: address} of the other
    workers) of TF_CONFIG's cluster, e.g. ("worker 0", "host-a:12345",
    {"worker 1": "host-b:12345"}); None without a TF_CONFIG naming this
    task (TensorFlow then reports the problem)."""
    text = environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        tf_config = json.loads(text)
    except ValueError as error:
        raise InputError(f"TF_CONFIG is not valid JSON: {error}") from None
    task = tf_config.get("task") or {}
    cluster = tf_config.get("cluster") or {}
    # The jobs whose tasks join the all-reduce (an evaluator or ps does
    # not).
    members = {f"{job} {index}": address
               for job in ("chief", "worker")
               for index, address in enumerate(cluster.get(job) or [])}
    own = f"{task.get('type')} {task.get('index')}"
    if own not in members:
        return None
    return own, members.pop(own), members


def _port(address):
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise InputError(f"TF_CONFIG: address {address!r} is not "
                         f"host:port") from None


def _accepts(address):
    """Whether something accepts TCP connections at `address` now."""
    try:
        socket.create_connection(_port(address),
                                 timeout=_PEER_CONNECT_SECONDS).close()
        return True
    except OSError:  # refused, unreachable, a name not resolved yet
        return False


@contextlib.contextmanager
def _listening(address):
    """Listens on this worker's port while it waits, so that the others
    see it is up; closed before TensorFlow's server takes the port."""
    _, port = _port(address)
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", port),
                                          family=socket.AF_INET6,
                                          dualstack_ipv6=True)
        else:
            server = socket.create_server(("", port))
    except OSError as error:
        raise InputError(f"Cannot listen on port {port} of this worker's "
                         f"address {address} in TF_CONFIG: "
                         f"{error.strerror}") from None
    try:
        yield
    finally:
        server.close()


def wait_for_workers(wait_seconds, environ=None):
    """Returns once every other worker of TF_CONFIG's cluster accepts
    connections at its address, saying once which it waits for.

    MultiWorkerMirroredStrategy waits for them too, but inside TensorFlow:
    silently, forever, and deaf to SIGTERM and SIGINT. Here the wait is in
    Python: each worker listens on its own port and tries the others' (a
    peer that answers is up, on its listener or already on TensorFlow's
    server), SIGTERM and SIGINT raise errors.Interrupted, and after
    `wait_seconds` (0: no limit) it raises InputError naming the workers
    that never answered.
    """
    peers = _cluster_peers(os.environ if environ is None else environ)
    if peers is None:
        return
    own, address, waiting = peers
    deadline = time.monotonic() + wait_seconds if wait_seconds else None
    said = False
    with _listening(address), raising_on_signals(
            "while waiting for the other workers"):
        while True:
            waiting = {name: peer for name, peer in waiting.items()
                       if not _accepts(peer)}
            if not waiting:
                return
            missing = ", ".join(f"{name} ({peer})"
                                for name, peer in waiting.items())
            if deadline is not None and time.monotonic() > deadline:
                raise InputError(
                    f"No answer from {missing} of TF_CONFIG's cluster "
                    f"within --worker_wait_seconds={wait_seconds}: start "
                    f"every worker with the same cluster, or raise "
                    f"--worker_wait_seconds")
            if not said:
                limit = (f"up to {wait_seconds} s (--worker_wait_seconds)"
                         if deadline is not None else "as long as it takes")
                print(f"Waiting for {missing} of TF_CONFIG's cluster to "
                      f"start (this is {own}, {address}), {limit}; "
                      f"SIGTERM or Ctrl-C stops", flush=True)
                said = True
            time.sleep(_PEER_POLL_SECONDS)
