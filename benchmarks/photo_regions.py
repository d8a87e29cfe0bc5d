"""Write the eight-class image folder that benchmarks/precision.md's ViT-Ti/16 bundle was trained on.

No image dataset can be downloaded here, so the classes come from the two real photos that ship with
scikit-learn: class = which quadrant of which photo (china, flower) a crop comes from; random size (64 px to the
quadrant), position and horizontal flip inside the quadrant; resized to 224 px and saved as JPEG (quality 90).

    python benchmarks/photo_regions.py /tmp/regions224 --per-class 100
    vitdeploy train --preset vit-ti16 --data /tmp/regions224 --epochs 3 --batch-size 32 --out /tmp/ti16regions
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def write_folder(out: Path, per_class: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    written = 0
    for name, pixels in zip(("china", "flower"), load_sample_images().images):
        photo = Image.fromarray(pixels)
        half_w, half_h = photo.size[0] // 2, photo.size[1] // 2
        for quadrant in QUADRANTS:
            left = half_w if quadrant.endswith("right") else 0
            top = half_h if quadrant.startswith("bottom") else 0
            folder = out / f"{name}-{quadrant}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                side = int(rng.integers(64, min(half_w, half_h) + 1))
                x = left + int(rng.integers(0, half_w - side + 1))
                y = top + int(rng.integers(0, half_h - side + 1))
                crop = photo.crop((x, y, x + side, y + side)).resize((224, 224), Image.BICUBIC)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crop.save(folder / f"{i:03d}.jpg", quality=90)
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    print(f"{write_folder(args.out, args.per_class)} images in {args.out}")


if __name__ == "__main__":
    main()
