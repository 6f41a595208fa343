"""`freeatm shapesbench check`: does a ShapesBench variant give mask guidance something to fix?

Under the contrastive baseline's augmentation (the pretraining's own RandomResizedCrop box sampler and scale),
two views are cropped from each scene, and an object counts as visible in a view when the crop keeps at least
the share of its pixels that a mask-aware crop guarantees (``minObjectShare``, its MaskPretrainJob default).
The check reports the share of views in which no object is visible and the share of view pairs that have no
visible object in common — the crops mask-aware cropping exists to avoid. The clutter variant must reach
:data:`MIN_VIEW_MISS` and :data:`MIN_PAIR_DISJOINT`; the last line printed is the result as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from ..shapes import VARIANTS, render

MIN_VIEW_MISS = 0.15
MIN_PAIR_DISJOINT = 0.40
_CHECK_STREAM = 2  # crop draws of image i: their own stream, unrelated to the scene's


@dataclass(frozen=True)
class MechanismCheck:
    """What the baseline's random crops do to the objects of a ShapesBench variant."""

    variant: str
    images: int
    size: int
    pairs: int
    scale: tuple[float, float]
    visible_share: float
    view_miss_share: float
    """Share of views in which no object is visible."""
    pair_disjoint_share: float
    """Share of view pairs with no visible object in common."""

    @property
    def passed(self) -> bool:
        return self.view_miss_share >= MIN_VIEW_MISS and self.pair_disjoint_share >= MIN_PAIR_DISJOINT

    def to_json(self) -> dict[str, object]:
        """The result with camelCase keys, as the last line of the CLI prints it."""
        return {
            "variant": self.variant,
            "images": self.images,
            "size": self.size,
            "pairs": self.pairs,
            "scale": list(self.scale),
            "visibleShare": self.visible_share,
            "viewMissShare": round(self.view_miss_share, 4),
            "pairDisjointShare": round(self.pair_disjoint_share, 4),
            "minViewMiss": MIN_VIEW_MISS,
            "minPairDisjoint": MIN_PAIR_DISJOINT,
            "passed": self.passed,
        }


def mechanism_check(
    variant: str = "clutter",
    images: int = 1024,
    *,
    size: int = 32,
    seed: int = 1000,
    pairs_per_image: int = 4,
) -> MechanismCheck:
    """Crop `pairs_per_image` view pairs from each of `images` scenes of `variant` (stream `seed`) like the
    contrastive baseline does, and measure how often the views miss every object or share none."""
    from freeatm.api.pretrain_job import Method

    from ..pretrain.data import integral_image, random_box
    from ..pretrain.loop import CONTRASTIVE_SCALE

    if images < 1 or pairs_per_image < 1:
        raise ValueError("images and pairs_per_image must be at least 1")
    visible_share = float(Method().min_object_share)
    missed = disjoint = 0
    for index in range(images):
        scene = render(seed, index, size, variant)
        integrals = [integral_image(obj.mask) for obj in scene.objects]
        totals = [max(int(i[-1, -1]), 1) for i in integrals]
        rng = np.random.default_rng([seed, index, _CHECK_STREAM])
        for _ in range(pairs_per_image):
            seen = []
            for _view in range(2):
                top, left, ch, cw = random_box(rng, size, size, CONTRASTIVE_SCALE)
                inside = [
                    i[top + ch, left + cw] - i[top, left + cw] - i[top + ch, left] + i[top, left]
                    for i in integrals
                ]
                visible = {k for k, n in enumerate(inside) if n >= visible_share * totals[k]}
                missed += not visible
                seen.append(visible)
            disjoint += not (seen[0] & seen[1])
    pairs = images * pairs_per_image
    return MechanismCheck(
        variant,
        images,
        size,
        pairs,
        tuple(CONTRASTIVE_SCALE),
        visible_share,
        view_miss_share=missed / (2 * pairs),
        pair_disjoint_share=disjoint / pairs,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m freeatm.runtime.shapesbench.check [--variant V] [--images N]`` (``freeatm shapesbench check``).

    Exit 0 when the thresholds hold, 1 when they do not, 2 for bad arguments."""
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="clutter")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--pairs-per-image", type=int, default=4)
    args = parser.parse_args(argv)
    if args.images < 1 or args.pairs_per_image < 1 or args.size < 16:
        parser.error("--images and --pairs-per-image must be at least 1, --size at least 16")
    result = mechanism_check(
        args.variant, args.images, size=args.size, seed=args.seed, pairs_per_image=args.pairs_per_image
    )
    print(
        f"ShapesBench {result.variant} at {result.size} px, {result.images} images, {result.pairs} view pairs "
        f"(RandomResizedCrop scale {result.scale}; an object is visible when a view keeps "
        f">= {result.visible_share:.0%} of it):"
    )
    print(f"  views that miss every object:  {result.view_miss_share:6.1%}  (needs >= {MIN_VIEW_MISS:.0%})")
    print(
        f"  pairs that share no object:    {result.pair_disjoint_share:6.1%}  (needs >= {MIN_PAIR_DISJOINT:.0%})"
    )
    print("  " + ("passed" if result.passed else "FAILED: random crops rarely miss the objects"))
    print(json.dumps(result.to_json()), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
