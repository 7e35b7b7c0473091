"""Writes folders of tiny randomly initialised Stable Diffusion components (the ones the tests build), laid out
like a user's local copy of a hub model, to exercise the pretrained-bundle path offline.

    python scripts/make_tiny_sd.py /tmp/tiny-sd                 # epsilon prediction
    python scripts/make_tiny_sd.py /tmp/tiny-sd-v --prediction_type v_prediction
    python scripts/make_tiny_sd.py /tmp/tiny-sd-cls --num_class_embeds 4   # a UNet that requires class labels
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rsdistill.generator.tiny import tiny_sd_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction"])
    parser.add_argument("--num_class_embeds", type=int, default=None)
    args = parser.parse_args()
    print(tiny_sd_folder(args.folder, prediction_type=args.prediction_type, num_class_embeds=args.num_class_embeds))


if __name__ == "__main__":
    main()
