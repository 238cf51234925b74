"""The sibling vision trainer ``ls-vision`` (paper sections 2-4 on images).

* :mod:`ls_plugins.vision.data`          -- digits (offline default), Fashion-MNIST, CIFAR-10/100,
  a synthetic set;
* :mod:`ls_plugins.vision.models`        -- CIFAR ResNets (He et al.), an AlexNet-style net, a
  small CNN; every model exposes ``penultimate(x)`` and ``last_layer``;
* :mod:`ls_plugins.vision.train`         -- the training loop and ``main`` (console script
  ``ls-vision``);
* :mod:`ls_plugins.vision.command_line`  -- its options, their checks, what ``--resume`` keeps;
* :mod:`ls_plugins.vision.checkpointing` -- safe loading, compatibility checks, saving, RNG states;
* :mod:`ls_plugins.vision.distributed`   -- torchrun / DistributedDataParallel helpers;
* :mod:`ls_plugins.vision.evaluation`    -- evaluation passes: calibration statistics, fitted T;
* :mod:`ls_plugins.vision.probes`        -- measured around training: the mutual information probe
  (``--mi-every``, Fig. 6), the teacher's gamma and ``--match-gamma`` (Fig. 5);
* :mod:`ls_plugins.vision.report`        -- metrics records, summary, ``ls-vision plot``;
* :mod:`ls_plugins.vision.projection_command` -- ``ls-vision project`` (Fig. 1, tightness);
* :mod:`ls_plugins.vision.figure_commands`    -- ``ls-vision plot-mi`` (Fig. 6), ``plot-fig5``.

The losses, the calibration metrics and the analysis come from :mod:`ls_plugins.losses`,
:mod:`ls_plugins.calibration` and :mod:`ls_plugins.analysis`; nothing here imports fairseq.
"""
