"""Wall time to score one set by docs/benchmark.md next to the compute floor of this machine.

The floor is the training FLOPs of the runs divided by the FLOP/s this machine reaches on a large matrix
product. The protocol trains under bf16 autocast where the CPU has bf16 instructions (its convolutions and
matrix products run in bf16), so the floor uses the bf16 matmul rate; the fp32 rate is measured and shown
too. FLOPs are counted by torch's FlopCounterMode on one real training step (forward and backward) and one
test forward. The matmul rate is the best of several timed products before and after the scoring, one thread's rate
per CPU-second times the thread count (on a machine shared with other processes a wall-clock rate would
depend on them). The CPU-time ratio (process CPU time over FLOPs at one core's rate) is the efficiency
figure that other processes disturb least; with one thread (--threads 1) it has no OpenMP waiting in it.

    RSDISTILL_DATA=/work/shared/datasets python scripts/bench_eval.py --dataset eurosat --ipc 10 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.networks import build_network
from rsdistill.evaluate.protocol import Protocol
from rsdistill.evaluate.scoring import Scorer, fixed, random_subset_indices


def matmul_rate(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of an n x n product: wall clock with all threads, and per CPU-second of one thread.

    One thread's rate per CPU-second times the thread count is the machine's capacity even while other
    processes share the cores (a wall-clock rate then depends on what they do at that moment)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    threads = torch.get_num_threads()
    best_wall = best_core = 0.0
    for _ in range(repeats):
        wall = time.perf_counter()
        a @ b
        best_wall = max(best_wall, 2 * n**3 / (time.perf_counter() - wall) / 1e9)
    torch.set_num_threads(1)
    for _ in range(repeats):
        cpu = time.process_time()
        a @ b
        best_core = max(best_core, 2 * n**3 / (time.process_time() - cpu) / 1e9)
    torch.set_num_threads(threads)
    return {"gflops_wall": best_wall, "gflops_per_core": best_core, "gflops_capacity": best_core * threads}


def step_flops(protocol: Protocol, num_classes: int) -> tuple[float, float]:
    """FLOPs of one training image (forward + backward) and one test image (forward)."""
    model = build_network(protocol.model, num_classes, protocol.resolution)
    x = torch.rand(8, 3, protocol.resolution, protocol.resolution)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
    train = counter.get_total_flops() / 8
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return train, counter.get_total_flops() / 8


def load() -> float:
    return float(os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = load()
    rates = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    dataset = load_dataset(args.dataset)
    protocol = Protocol(steps=args.steps, precision=args.precision)
    scorer = Scorer.for_dataset(dataset, protocol)
    train = dataset.images("train", protocol.resolution)
    index = random_subset_indices(train.labels, args.ipc, seed=0)
    images, labels = np.asarray(train.images[index]), train.labels[index]
    cpu = time.process_time()
    score = scorer.score(fixed(images, labels), seeds=tuple(range(args.runs)), desc=f"IPC {args.ipc}")
    cpu = time.process_time() - cpu
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        after = matmul_rate(dtype)
        rates[name] = {k: max(v, after[k]) for k, v in rates[name].items()}
    load_after = load()

    per_train, per_test = step_flops(scorer.protocol, len(dataset.classes))
    batch = min(protocol.batch_size, len(images))
    train_flops = args.runs * args.steps * batch * per_train
    test_flops = args.runs * len(scorer.test_labels) * per_test
    precision = scorer.protocol.precision
    rate = rates[precision]["gflops_capacity"] * 1e9
    train_s, test_s = sum(score.train_s), sum(score.test_s)
    figures = {
        "dataset": args.dataset, "ipc": args.ipc, "runs": args.runs, "steps": args.steps, "batch": batch,
        "protocol": scorer.protocol.label, "threads": torch.get_num_threads(),
        "accuracy": {"mean": score.mean, "std": score.std, "runs": score.runs},
        "gflop_per_train_image": per_train / 1e9, "gflop_per_test_image": per_test / 1e9,
        "train_tflop": train_flops / 1e12, "test_tflop": test_flops / 1e12,
        "matmul_gflops": rates, "floor_precision": precision,
        "floor_train_s": train_flops / rate,
        "floor_train_and_test_s": (train_flops + test_flops) / rate,
        "wall_train_s": train_s, "wall_test_s": test_s, "compile_s": score.compile_s, "wall_total_s": score.wall_s,
        "ratio_train": train_s / (train_flops / rate),
        "ratio_train_and_test": (train_s + test_s) / ((train_flops + test_flops) / rate),
        "ratio_total_vs_train_floor": score.wall_s / (train_flops / rate),
        "cpu_s": cpu,
        "ratio_cpu_time": cpu / ((train_flops + test_flops) / (rates[precision]["gflops_per_core"] * 1e9)),
        "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    print(
        f"\nscoring {args.dataset} IPC {args.ipc}, {args.runs} runs x {args.steps} steps ({scorer.protocol.label}):\n"
        f"  wall: train {train_s:.1f} s + test {test_s:.1f} s + compile {score.compile_s:.1f} s "
        f"= {score.wall_s:.1f} s\n"
        f"  floor ({precision} matmul {rate / 1e9:.0f} GFLOP/s = {torch.get_num_threads()} x one core's; fp32 "
        f"{rates['fp32']['gflops_capacity']:.0f}; seen on the wall clock: {precision} "
        f"{rates[precision]['gflops_wall']:.0f}): "
        f"train {figures['floor_train_s']:.1f} s, train+test {figures['floor_train_and_test_s']:.1f} s\n"
        f"  ratio: train {figures['ratio_train']:.2f}x, train+test {figures['ratio_train_and_test']:.2f}x, "
        f"everything vs train floor {figures['ratio_total_vs_train_floor']:.2f}x, "
        f"CPU-time based {figures['ratio_cpu_time']:.2f}x\n"
        f"  load average before {load_before:.1f}, after {load_after:.1f} ({os.cpu_count()} CPUs)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
