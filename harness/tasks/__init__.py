"""Tasks that train or feed the models: the paper's duplication task (duplication.py) and structured
attention inputs for fidelity measurements (clustered.py). They depend on torch and impls only."""
