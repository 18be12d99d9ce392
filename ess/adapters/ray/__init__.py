"""Ray Tune around the core loops: the job config, the trainables, the experiment the jobs in ``tune_jobs/`` run.

The jobs build their own ``Tuner``s from :mod:`ess.adapters.ray.experiment` (the Ray session, the
experiment directory and its parent MLflow run) and :mod:`ess.adapters.ray.trainables`; what they
share (entry point, result rows, closing lines) is :mod:`ess.adapters.ray.jobs`.
"""
