"""The sibling vision trainer ``ls-vision`` (paper sections 2-4 on images).

* :mod:`ls_plugins.vision.data`   -- digits (offline default), CIFAR-10/100, a synthetic set;
* :mod:`ls_plugins.vision.models` -- CIFAR ResNets (He et al.), an AlexNet-style net, a small CNN;
  every model exposes ``penultimate(x)`` and ``last_layer``;
* :mod:`ls_plugins.vision.train`  -- the trainer (console script ``ls-vision``).

The losses and the calibration metrics come from :mod:`ls_plugins.losses` and
:mod:`ls_plugins.calibration`; nothing here imports fairseq.
"""
