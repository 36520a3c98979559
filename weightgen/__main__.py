"""Command line: write random-weight model files under a ComfyUI ``models/`` folder."""
import argparse
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weightgen", description=__doc__)
    parser.add_argument("models_dir", type=Path, help="a ComfyUI models/ folder (created if missing)")
    parser.add_argument("--size", choices=["unit", "full"], default="full",
                        help="full: real shapes; unit: reduced ConsistentID shapes for fast tests")
    parser.add_argument("--comfyui", type=Path, default=None,
                        help="a ComfyUI checkout; when given, also write an SD1.5 checkpoint, an SD1.5 ControlNet and a CLIP-ViT-H file (run with ComfyUI's Python)")
    parser.add_argument("--sdxl", action="store_true",
                        help="with --size full, also write the SDXL ConsistentID checkpoint (1.7 GB)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from . import bisenet, consistentid, dino, insightface_pack

    written = {}
    written.update(consistentid.write_checkpoints(args.models_dir, size=args.size, seed=args.seed,
                                                include_sdxl=args.sdxl))
    written.update(bisenet.write_face_parsers(args.models_dir, seed=args.seed))
    written.update(insightface_pack.write_packs(args.models_dir, seed=args.seed))
    written.update(dino.write_dino(args.models_dir, seed=args.seed))
    if args.comfyui is not None:
        from . import host_models

        written.update(host_models.write_host_models(args.models_dir, args.comfyui, seed=args.seed))
    for name, path in written.items():
        print(f"{name:24s} {path}")


if __name__ == "__main__":
    main()
