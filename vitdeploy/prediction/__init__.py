"""`vitdeploy predict`: batched decode and inference on one session (local.py), the rows and their writers
(rows.py), and the same rows on Ray Data (ray.py)."""
