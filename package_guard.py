"""Makes sure ``datasets``, ``nets``, ... are this project's packages, not a PyPI namesake.

The top-level names follow the TF-Slim / SSD-Tensorflow family, but ``datasets`` is
also Hugging Face's very common package (and ``preprocessing`` or ``checkpoints`` may
exist elsewhere). Scripts call :func:`ensure_project_packages` before importing them:
it puts the project root first on ``sys.path`` and checks a marker that only this
project's packages carry, so a shadowing install fails with a message naming it.
"""

import importlib
import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.abspath(__file__))
PROJECT_PACKAGES = ("datasets", "nets", "preprocessing", "deployment", "checkpoints", "evaluation", "training")
MARKER = "__ssd_towers__"


class PackageClashError(ImportError):
    """Another installed package took the place of one of ours."""


def _clash_message(name, module):
    location = getattr(module, "__file__", None) or getattr(module, "__path__", "?")
    hint = " (that is Hugging Face's `datasets`)" if name == "datasets" else ""
    return (
        f"ssd-towers needs its own package '{name}', but Python imported '{name}' from {location}{hint}. "
        f"Another installed package uses the same top-level name. Install ssd-towers in its own virtual "
        f"environment (python3 -m venv .venv && . .venv/bin/activate && pip install -e .), or "
        f"`pip uninstall` the other '{name}' package from this one."
    )


def ensure_project_packages(names=PROJECT_PACKAGES):
    """Imports the project's packages from PROJECT_ROOT; raises PackageClashError if shadowed."""
    if sys.path[:1] != [PROJECT_ROOT]:
        if PROJECT_ROOT in sys.path:
            sys.path.remove(PROJECT_ROOT)
        sys.path.insert(0, PROJECT_ROOT)
    for name in names:
        module = sys.modules.get(name) or importlib.import_module(name)
        if not getattr(module, MARKER, False):
            raise PackageClashError(_clash_message(name, module))
