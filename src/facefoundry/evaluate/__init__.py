"""Measure a dataset's worth: intrinsic judge metrics, train-then-verify, benchmark verification.

Modules: ``scores`` (EER, ROC, TAR@FAR from genuine/impostor scores), ``verification`` (the
10-fold benchmark protocol), ``benchmarks`` (InsightFace ``.bin`` files, read without running
pickled code), ``intrinsic`` (judge metrics over a run's kept images), ``config`` / ``train``
(training an FR model on a run with Ray Train)."""
