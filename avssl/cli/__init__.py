"""Console entry points (Hydra apps): ``avssl-train`` and, from other modules, export / extract / eval."""
