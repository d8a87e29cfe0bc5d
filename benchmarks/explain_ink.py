"""How much of each explain map's mass lands on a digit's ink, against the ink's share of the image area.

    python benchmarks/explain_ink.py models/digits/best

For every held-out image of a digits bundle: ink = the pixels of the model input, un-normalised, at least half as
bright as full ink. Each map's patch mass is spread evenly over its patch's pixels; the share on ink is compared with
the ink's share of the image area (what a uniform map gives) and with the share the dataset-mean map of the same
method gets (a fixed map, the same for every image: what a centre prior alone gives).
"""

from __future__ import annotations

import argparse

import torch

from vitdeploy.core import images
from vitdeploy.explanation import maps
from vitdeploy.files.bundle import load_bundle
from vitdeploy.training.data import heldout_images

INK_LEVEL = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    args = parser.parse_args()
    model, info = load_bundle(args.bundle)
    pairs = heldout_images(info.dataset, info.labels, spec=info.preprocess)
    x = torch.from_numpy(images.preprocess_batch([image for image, _ in pairs], info.preprocess))
    mean, std = (torch.tensor(v)[:, None, None] for v in (info.preprocess.mean, info.preprocess.std))
    ink = (x * std + mean).mean(dim=1) >= INK_LEVEL  # (B, H, W)
    area = float(ink.float().mean())
    print(f"{args.bundle}: {len(x)} held-out images, ink = {area:.1%} of the pixels "
          f"(held-out accuracy {info.metrics.get('val_accuracy', float('nan')):.2%})")
    print("| method | mass on ink | dataset-mean map on ink | ink area | images with mass share > their ink area |")
    print("|---|---|---|---|---|")
    for method in maps.METHODS:
        mass = maps.patch_mass(maps.attention_maps(model, x, method).patch)  # (B, n)
        own = maps.mass_on_mask(mass, ink, info.model.patch_size)
        fixed = maps.mass_on_mask(mass.mean(dim=0).expand_as(mass), ink, info.model.patch_size)
        above = float((own > ink.float().mean(dim=(1, 2))).float().mean())
        print(f"| {method} | {float(own.mean()):.3f} | {float(fixed.mean()):.3f} | {area:.3f} | {above:.1%} |")


if __name__ == "__main__":
    main()
