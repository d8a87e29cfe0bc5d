"""`vitdeploy verify`: the report (run.py), PyTorch against every runtime and runtime against runtime (parity.py), and
per-block localisation of a difference (intermediates.py)."""
