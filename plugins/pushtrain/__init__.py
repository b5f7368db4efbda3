"""pushtrain: push model code to git, get a trained model that meets its target.

Importing this package imports nothing heavy: the DAG files import it at every parse, and the training
runner (``pushtrain.runner``) is copied into the images with the kinds table (``pushtrain.kinds``) and
without the rest of the package.
"""

from __future__ import annotations

__version__ = "0.1.0"
