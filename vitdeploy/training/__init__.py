"""`vitdeploy train`: the data (data.py), one epoch and evaluation (engine.py), the run with resume and saving
(run.py), torchrun/DDP (distributed.py) and fine-tuning from a bundle (finetune.py)."""
