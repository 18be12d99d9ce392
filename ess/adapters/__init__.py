"""The only place that imports Ray, MLflow or Optuna: the core publishes, these adapters subscribe."""
