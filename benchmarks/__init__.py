"""Benchmarks of serac: SERAC against weight editors (``python -m benchmarks.run``) and focused studies."""
