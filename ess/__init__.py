"""ess: differentiable search of recurrent cells over an extended search space (Li et al., ACL 2020).

The core (data, genotypes, cells, models, search and training loops) is plain PyTorch and imports
nothing from Ray or MLflow; the orchestration adapters live in their own modules.
"""

__version__ = "0.1.0"
