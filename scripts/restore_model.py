"""Put back the weights a fine-tuning run replaced, in a running or stopped server's app folder.

    .venv/bin/python scripts/restore_model.py apps/limnet            # limnet.prev.pt -> limnet.pt
    .venv/bin/python scripts/restore_model.py apps/limnet --base     # serve model/pretrained_limnet.pt again

The trainer keeps the replaced file as `model/limnet.prev.pt`. The swap is an atomic rename, so a click in flight
reads either file whole; the server reloads weights when the served file's modification time changes (no restart).
The weights being replaced are kept as `limnet.rejected.pt`.
"""

from __future__ import annotations

import argparse
import os
import shutil


def restore(app_dir: str, name: str = "limnet", base: bool = False) -> str:
    """Make the previous (or, with `base`, the packaged) weights the served ones; returns what is served now."""
    model = os.path.join(app_dir, "model")
    served, prev = os.path.join(model, f"{name}.pt"), os.path.join(model, f"{name}.prev.pt")
    rejected = os.path.join(model, f"{name}.rejected.pt")
    if base:
        if os.path.exists(served):
            os.replace(served, rejected)
        return os.path.join(model, f"pretrained_{name}.pt")
    if not os.path.exists(prev):
        raise SystemExit(f"no previous weights at {prev}: nothing to restore (use --base for the packaged ones)")
    tmp = served + ".restore.tmp"
    shutil.copy2(prev, tmp)
    if os.path.exists(served):
        shutil.copy2(served, rejected)
    os.replace(tmp, served)
    os.utime(served)  # a new modification time: the server reloads
    return served


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app_dir")
    p.add_argument("--name", default="limnet")
    p.add_argument("--base", action="store_true", help="serve the packaged pretrained weights again")
    args = p.parse_args()
    print("serving", restore(args.app_dir, args.name, args.base))


if __name__ == "__main__":
    main()
