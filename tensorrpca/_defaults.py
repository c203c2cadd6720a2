"""rpca's learned default hyperparameters (a copy of ``data/rpca_defaults.json``'s ``params``; a test checks they
agree). Written by ``python benchmarks/learn_rpca_defaults.py --write``; see that script for how they were learned.

``None``: no learned values yet (the classic ones are used)."""

LEARNED: dict | None = {'rho': 0.871, 'eta': 0.6397, 'zeta1_scale': 1.1994}
