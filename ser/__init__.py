"""ser: speech emotion recognition as a reproducible pipeline.

The package is an ordinary library: nothing here knows about DVC. Stages in ``stages/`` read
``params.yaml`` and call into it.
"""

__version__ = "0.1.0"
