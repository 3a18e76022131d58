"""Example creation that streams the input: memory bounded by a unit of
text, not by the corpus, and the units spread over processes.

The input files are cut into *units*: runs of whole documents of about
`unit_bytes` bytes, each cut made just after a blank line (`plan_units`),
so a unit's documents are exactly those a reading of the whole file finds
there. A unit is the whole of the work on its text: its documents are
read, tokenized, turned into examples `dupe_factor` times with a
`random.Random` of its own (seeded from the run's seed and the unit's
index, `unit_seed`), shuffled and serialized, then dropped. The random
"next sentence" of a pair is drawn from the documents of the same unit
(Google's generator draws from any document of the whole corpus, which
needs all of it in memory). What a unit gives depends on its text, the
flags and the seed only, never on which process made it, so the output is
the same whatever the number of workers (`run_units` hands the results
back in the units' order).
"""

import collections
import contextlib
import dataclasses
import hashlib
import multiprocessing
import re
import sys
import time
from typing import Optional

import tensorflow as tf

from train.data import corpus
from train.data import examples
from train.data import tokenization
from train.data.reading import matching_files

# Text per unit: one unit's documents, tokenized, and its examples fit in
# some tens of MB of a worker's memory (Python lists cost about 20 bytes
# per byte of text), and on Wikipedia a unit still holds hundreds of
# documents for the random next sentence.
UNIT_BYTES = 1 << 20
# Where a unit may end: just after a line of ASCII blanks (a document
# boundary under any reading of the text, since ASCII blanks are blanks
# for str.strip() too).
_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
_SCAN_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Unit:
    """Bytes [start, end) of `path`, whole documents; `index` counts the
    units of all the input files in order."""

    index: int
    path: str
    start: int
    end: int


def _next_cut(handle, position, size):
    """The offset just after the first blank line that ends at or after
    `position`, or `size` when none is left."""
    if position >= size:
        return size
    handle.seek(position)
    carry, base = b"", position
    while True:
        block = handle.read(_SCAN_BYTES)
        if not block:
            return size
        text = carry + block
        found = _BLANK_LINE.search(text)
        if found:
            return base + found.end()
        # Keep the last line: a blank line may straddle two blocks.
        keep = len(text) - text.rfind(b"\n") if b"\n" in text else 0
        keep = min(keep, 4096)
        base += len(text) - keep
        carry = text[len(text) - keep:] if keep else b""


def plan_units(patterns, unit_bytes=UNIT_BYTES):
    """The units of the files matching `patterns` (ValueError when one
    matches nothing): a few seeks and reads per unit, not a pass over the
    text."""
    if unit_bytes < 1:
        raise ValueError(f"unit_bytes must be >= 1, got {unit_bytes}")
    units = []
    for path in matching_files(patterns, "input file"):
        size = tf.io.gfile.stat(path).length
        with tf.io.gfile.GFile(path, "rb") as handle:
            start = 0
            while start < size:
                end = _next_cut(handle, start + unit_bytes - 1, size)
                units.append(Unit(len(units), path, start, end))
                start = end
    return units


def read_unit(unit):
    """The documents (lists of sentences) of `unit`, as
    train.data.corpus.read_documents finds them in the whole file."""
    try:
        with tf.io.gfile.GFile(unit.path, "rb") as handle:
            handle.seek(unit.start)
            text = handle.read(unit.end - unit.start).decode("utf-8")
    except tf.errors.OpError as error:
        raise ValueError(f"Cannot read {unit.path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{unit.path} is not UTF-8 text: {error}") from None
    return corpus.documents_of_text(text)


def iter_documents(patterns, unit_bytes=UNIT_BYTES):
    """Every document of the files, one unit in memory at a time."""
    for unit in plan_units(patterns, unit_bytes):
        yield from read_unit(unit)


def unit_seed(seed, index):
    """The seed of unit `index`'s draws: a hash of both, so neighbouring
    seeds or units share no stream."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a unit's examples are made with (picklable, for workers)."""

    vocab_file: str
    lower_case: bool
    max_seq_length: int
    max_predictions: int
    masked_lm_prob: float
    short_seq_prob: float
    dupe_factor: int
    whole_word_mask: bool
    seed: int
    # A document is kept when keep(document) is true (None: all of them);
    # must be a module-level function for the workers.
    keep: Optional[object] = None
    # Whether to count the training text's WordPieces (for a baseline).
    count_pieces: bool = False


@dataclasses.dataclass
class UnitResult:
    """What a unit gave, in the unit's own order."""

    index: int
    documents: int
    bytes: int
    records: list = dataclasses.field(default_factory=list)
    words: Optional[collections.Counter] = None
    pieces: Optional[collections.Counter] = None


# Per process: vocabulary files read once, not once per unit.
_TOKENIZERS = {}


def _tokenizer(vocab_file, lower_case):
    key = (vocab_file, lower_case)
    if key not in _TOKENIZERS:
        tokens = tokenization.read_vocab(vocab_file)
        _TOKENIZERS[key] = (tokenization.BertTokenizer(tokens, lower_case),
                            examples.Vocab(tokens))
    return _TOKENIZERS[key]


def _kept_documents(unit, keep):
    documents = read_unit(unit)
    return [d for d in documents if keep(d)] if keep else documents


def unit_examples(task):
    """(unit, settings) -> UnitResult with the unit's serialized
    examples."""
    unit, settings = task
    tokenizer, vocab = _tokenizer(settings.vocab_file, settings.lower_case)
    documents = _kept_documents(unit, settings.keep)
    kept = len(documents)
    tokenized = tokenization.tokenize_with(tokenizer, documents)
    del documents
    pieces = None
    if settings.count_pieces:
        pieces = collections.Counter(
            piece for document in tokenized for sentence in document
            for word in sentence for piece in word)
    instances = examples.create_instances(
        tokenized, vocab, settings.max_seq_length, settings.max_predictions,
        settings.masked_lm_prob, settings.short_seq_prob,
        settings.dupe_factor, settings.whole_word_mask,
        unit_seed(settings.seed, unit.index))
    records = [examples.serialize(instance, settings.max_seq_length,
                                  settings.max_predictions)
               for instance in instances]
    return UnitResult(unit.index, kept, unit.end - unit.start, records,
                      pieces=pieces)


def unit_words(task):
    """(unit, (lower_case, keep)) -> UnitResult with the unit's word
    counts (Google's words), in the order the words first occur."""
    unit, (lower_case, keep) = task
    documents = _kept_documents(unit, keep)
    words = collections.Counter(
        word for document in documents for sentence in document
        for word in tokenization.basic_tokenize(sentence, lower_case))
    return UnitResult(unit.index, len(documents), unit.end - unit.start,
                      words=words)


@contextlib.contextmanager
def workers(num_workers=1):
    """A pool of `num_workers` processes for `run_units` (None for 1: the
    units run in this process). The workers are forked from a fresh server
    process that imported this module (TensorFlow with it) once, not from
    this one, whose TensorFlow threads a fork would copy mid-way; and not
    spawned, which would import TensorFlow again in every worker."""
    if num_workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(num_workers) as pool:
        yield Pool(pool, num_workers)


@dataclasses.dataclass
class Pool:
    """Worker processes and how many there are."""

    processes: object
    size: int


def run_units(function, units, argument, pool=None):
    """function((unit, argument)) for every unit, yielded in the units'
    order. With a pool, at most 2 units per worker are in flight or
    waiting, so memory stays bounded however many units there are."""
    tasks = ((unit, argument) for unit in units)
    if pool is None:
        yield from map(function, tasks)
        return
    pending = collections.deque()
    for task in tasks:
        pending.append(pool.processes.apply_async(function, (task,)))
        if len(pending) >= 2 * pool.size:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class Progress:
    """Documents, examples, MB/s and the time left, on stderr every
    `interval` seconds (none for a run shorter than that; every unit with
    an interval of 0)."""

    def __init__(self, total_bytes, interval=10.0, what="examples",
                 stream=None):
        self.total_bytes, self.interval, self.what = (total_bytes, interval,
                                                      what)
        self.stream = stream or sys.stderr
        self.started = self.last = time.monotonic()
        self.documents = self.count = self.bytes = 0

    def update(self, result, count=0):
        self.documents += result.documents
        self.bytes += result.bytes
        self.count += count
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(now - self.started), file=self.stream,
                  flush=True)

    def line(self, elapsed):
        rate = self.bytes / max(elapsed, 1e-9)
        left = max(self.total_bytes - self.bytes, 0) / max(rate, 1e-9)
        share = 100 * self.bytes / max(self.total_bytes, 1)
        text = (f"Progress: {self.bytes / 1e6:.1f} of "
                f"{self.total_bytes / 1e6:.1f} MB ({share:.0f} %), "
                f"{self.documents} documents")
        if self.what:
            text += f", {self.count} {self.what}"
        return (text + f", {rate / 1e6:.2f} MB/s, ETA "
                f"{_duration(left)}")


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def count_words(units, lower_case=True, keep=None, pool=None,
                progress_seconds=10.0):
    """(word counts, documents) of the units' documents: a Counter whose
    keys come in the order the words first occur in the text (as one pass
    over the whole text would give), bounded by the distinct words."""
    counts = collections.Counter()
    progress = Progress(sum(u.end - u.start for u in units),
                        progress_seconds, what=None)
    for result in run_units(unit_words, units, (lower_case, keep), pool):
        counts.update(result.words)
        progress.update(result)
    return counts, progress.documents


def output_files(output_file, output_shards=1):
    """The output files of --output_file (a comma-separated list, or one
    base name) and --output_shards: `base-00003-of-00008` for shard 3 of
    8 from a base name."""
    files = list(output_file)
    if output_shards < 1:
        raise ValueError(f"--output_shards must be >= 1, got "
                         f"{output_shards}")
    if output_shards == 1 or len(files) == output_shards:
        return files
    if len(files) > 1:
        raise ValueError(f"--output_shards={output_shards} with "
                         f"{len(files)} --output_file names; give one base "
                         f"name or as many names as shards")
    return [f"{files[0]}-{i:05d}-of-{output_shards:05d}"
            for i in range(output_shards)]


def write_examples(units, settings, paths, pool=None,
                   progress_seconds=10.0, on_result=None):
    """Makes every unit's examples and writes them round-robin over
    `paths` (replacing them), record i of the whole stream to file
    i % len(paths). Returns (examples, documents)."""
    for path in paths:
        # A writer opened on an existing file appends on some file systems
        # (TensorFlow's ram://); Cloud Storage and local disks replace it.
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    progress = Progress(sum(u.end - u.start for u in units),
                        progress_seconds)
    written = 0
    try:
        for result in run_units(unit_examples, units, settings, pool):
            for record in result.records:
                writers[written % len(writers)].write(record)
                written += 1
            progress.update(result, len(result.records))
            if on_result:
                on_result(result)
    finally:
        for writer in writers:
            writer.close()
    return written, progress.documents
