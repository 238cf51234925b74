"""ls_plugins: label smoothing, distillation and calibration for fairseq and PyTorch.

Used as a fairseq user directory (``fairseq-train --user-dir ls_plugins --criterion smoothed_ce``):
fairseq imports this package after importing itself, and the fairseq components (criteria, the
calibration task and scorer) are registered then.  The vision trainer and the math modules
never import fairseq; scripts that want the fairseq components without ``--user-dir`` call
:func:`register_fairseq`.

Importing the package also lets fairseq checkpoints load under torch's safe loading
(``weights_only=True``, the default since torch 2.6): see :mod:`ls_plugins.checkpoints`.
"""
import sys

from . import checkpoints

__version__ = "0.1.0"

checkpoints.allow_fairseq_checkpoint_globals()


def register_fairseq() -> None:
    """Import (and so register with fairseq) our criteria, tasks and scorers."""
    import fairseq  # noqa: F401  (registries live there)

    from . import criterions, scoring, tasks  # noqa: F401

    checkpoints.explain_unsafe_globals()


if "fairseq" in sys.modules:
    register_fairseq()
