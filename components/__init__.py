"""Pure library code of the chest X-ray MLOps system: no ZenML imports here (README, "Module map")."""
