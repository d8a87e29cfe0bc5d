"""The Vision Transformer itself (vit.py), step by step: what training builds, bundles store and export traces."""
