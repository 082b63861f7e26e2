"""The base of resnetlab's own errors, so that a program can catch them all in one ``except``.

Each module raises its own kind (``data.DataError``, ``runs.RunError``, ``pretrained.WeightsError``,
``keras_weights.KerasError``, ``models.UnknownModelError``, ``train.Diverged``) with a message that
names the file or value at fault and what to change; they all derive from ``ResnetlabError``. An
argument out of range is Python's ``ValueError`` and one of the wrong kind a ``TypeError``, as in
PyTorch. ``train.Interrupted`` is none of these: a run stopped on request is not a failure, and
it is a ``KeyboardInterrupt``, which ``except Exception`` lets through.
"""


class ResnetlabError(Exception):
    """Something resnetlab was asked to do cannot be done; the message says why and what to change."""
