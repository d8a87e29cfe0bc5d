"""Shared layer under every stage: configs and presets, THE image preprocessing, input discovery, FLOPs, atomic
writes, strict JSON, optional installs, provenance, the CPU's features and progress. Imports nothing else of
vitdeploy but errors."""
