"""The discrete models: a genotype's recurrent cell inside the language model (retraining, transfer)."""
