"""Answers for audio: scoring a file, a folder or a long recording (``predict``), loading the
model to score with (``loader``), the MLflow pyfunc model (``pyfunc``), and ``ser serve``'s web
app over a pool of predictor processes (``app``, ``pool``, ``workers``, ``server``)."""
