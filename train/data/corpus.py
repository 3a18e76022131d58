"""Documents of text for pretraining: read from text files, or made from
the docstrings of the Python standard library (a small English corpus that
exists wherever Python is installed).

The text format has one sentence per line and a blank line between
documents (`read_documents`, `write_text_corpus`).  The docstrings are read
from the library's source files with `ast` (no module is imported, so
nothing runs), cleaned of code examples, split into sentences and grouped
into documents: one document per module, class or function docstring.  The
result depends only on the Python version, never on the machine's state, and
is the same on every call.
"""

import ast
import os
import re
import sysconfig

import tensorflow as tf

from train.data.reading import matching_files

# Packages whose docstrings are mostly tests, data tables or platform glue.
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages",
                 "dist-packages", "lib2to3", "ensurepip", "turtledemo",
                 "__pycache__", "encodings", "pydoc_data", "tkinter"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |#|[-=~^*]{3,}\s*$)")
_MIN_WORDS = 4
_MAX_WORDS = 60


def stdlib_source_files(root=None):
    """Sorted paths of the standard library's .py files (tests excluded)."""
    root = root or sysconfig.get_paths()["stdlib"]
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        paths.extend(os.path.join(directory, f) for f in files
                     if f.endswith(".py") and not f.startswith("test_"))
    return sorted(paths)


def _docstrings(source):
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
        n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    for node in nodes:
        text = ast.get_docstring(node, clean=True)
        if text:
            yield text


def _is_prose(sentence):
    words = sentence.split()
    if not _MIN_WORDS <= len(words) <= _MAX_WORDS:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    if letters < 0.85 * len(sentence):
        return False
    return sentence[0].isupper()


def split_sentences(text):
    """Sentences of a docstring, code examples and tables left out."""
    paragraphs, current = [], []
    for line in text.splitlines():
        if not line.strip() or _CODE_LINE.match(line) or line.startswith(
                ("    ", "\t")):
            if current:
                paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    sentences = []
    for paragraph in paragraphs:
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = sentence.strip()
            if _is_prose(sentence):
                sentences.append(sentence)
    return sentences


def stdlib_documents(max_documents=None, root=None):
    """Lists of sentences, one list per docstring with at least 2 of them."""
    documents = []
    for path in stdlib_source_files(root):
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        for text in _docstrings(source):
            sentences = split_sentences(text)
            if len(sentences) >= 2:
                documents.append(sentences)
                if max_documents and len(documents) >= max_documents:
                    return documents
    return documents


def write_text_corpus(documents, path):
    """Writes documents in the pretraining text format: one sentence per
    line, a blank line between documents."""
    with tf.io.gfile.GFile(str(path), "w") as f:
        f.write("".join("\n".join(document) + "\n\n"
                        for document in documents))


def documents_of_text(text):
    """The documents (lists of stripped sentences) of text in the format of
    `write_text_corpus`: one sentence per line, blank lines between
    documents."""
    documents, current = [], []
    for line in text.splitlines():
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def read_documents(patterns):
    """Documents (lists of sentences) from the text files matching
    `patterns`, in the format of `write_text_corpus`.

    Raises ValueError when a pattern matches nothing, a file cannot be read
    or is not UTF-8, or no text is found.
    """
    paths = matching_files(patterns, "input file")
    documents = []
    for path in paths:
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                text = f.read().decode("utf-8")
        except tf.errors.OpError as error:
            raise ValueError(f"Cannot read {path}: {error}") from None
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text: {error}") from None
        documents += documents_of_text(text)
    if not documents:
        raise ValueError(f"No text in {', '.join(paths)}")
    return documents
