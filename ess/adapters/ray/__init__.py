"""Ray Tune around the core loops: the job config, the trainables, the experiment the jobs in ``tune_jobs/`` run.

Each job reads as its stages, each one :meth:`Experiment.stage <ess.adapters.ray.experiment.Experiment.stage>`
(a ``Tuner`` of a trainable of :mod:`ess.adapters.ray.trainables` over a grid of variants, restored when
resuming); what the jobs share (entry point, preflight, closing lines) is :mod:`ess.adapters.ray.jobs`.
"""

from ess.extras import require

require("tune", "a Ray Tune job (ess.adapters.ray)")
