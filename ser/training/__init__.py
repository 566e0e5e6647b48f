"""Folds, training, evaluation, the cross-corpus figure, tuning and tracking."""
