"""Corpora, their download and harmonization into the one metadata table, augmentation."""
