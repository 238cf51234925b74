"""The sibling vision trainer ``ls-vision`` (paper sections 2-4 on images).

* :mod:`ls_plugins.vision.data`          -- digits (offline default), CIFAR-10/100, a synthetic set;
* :mod:`ls_plugins.vision.models`        -- CIFAR ResNets (He et al.), an AlexNet-style net, a
  small CNN; every model exposes ``penultimate(x)`` and ``last_layer``;
* :mod:`ls_plugins.vision.train`         -- the training loop and ``main`` (console script
  ``ls-vision``);
* :mod:`ls_plugins.vision.command_line`  -- its options, their checks, what ``--resume`` keeps;
* :mod:`ls_plugins.vision.checkpointing` -- safe loading, compatibility checks, saving, RNG states;
* :mod:`ls_plugins.vision.distributed`   -- torchrun / DistributedDataParallel helpers;
* :mod:`ls_plugins.vision.report`        -- metrics records, summary, ``ls-vision plot``.

The losses and the calibration metrics come from :mod:`ls_plugins.losses` and
:mod:`ls_plugins.calibration`; nothing here imports fairseq.
"""
