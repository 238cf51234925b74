"""Looking inside trained models (paper sections 2 and 4): pure torch, no fairseq, no matplotlib.

* :mod:`.projection`: template planes, projections of penultimate activations and cluster
  tightness (Fig. 1), distances to the wrong classes' templates;
* :mod:`.mutual_information`: the Gaussian estimate of the mutual information between an example
  and its logits under data augmentation (Fig. 6);
* :mod:`.gamma_matching`: the distillation temperature at which a teacher's equivalent
  smoothing gamma equals a target (Fig. 5).
"""
from .gamma_matching import TemperatureMatch, bisect_temperature, temperature_for_gamma
from .mutual_information import estimate_mutual_information, logit_difference
from .projection import (cluster_tightness, project, template_plane, templates,
                         wrong_template_distance_cv)

__all__ = [
    "TemperatureMatch", "bisect_temperature", "temperature_for_gamma",
    "estimate_mutual_information", "logit_difference",
    "cluster_tightness", "project", "template_plane", "templates", "wrong_template_distance_cv",
]
