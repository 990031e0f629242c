"""Images per second that the cached thyroid dataset feeds through a DataLoader, with augmentation on.

Builds a synthetic preprocessing cache (``--images`` random ``--source-size`` uint8 frames with an
elliptical nodule, resized once into the cache by :func:`~mtlbench.tasks.thyroid.preprocess.build_cache`)
at each ``--sizes`` px, then for each ``--workers`` count times ``DataLoader(CachedThyroidDataset(...,
augment=AugmentConfig()), batch_size, num_workers=w, shuffle=True)``. Each repeat starts a fresh iterator,
discards ``2·w + 1`` warm-up batches (worker start-up, prefetch fill) and times the next ``--batches``;
the worker counts are interleaved round by round, and the table shows the median over ``--repeats`` and
the inter-quartile range, plus the rate per worker process. It also times one ``__getitem__`` in this
process (augmentation on and off, one thread), which with the core count bounds what more workers can
reach. The JSON written to ``--out`` records the machine, versions and commit; compare only runs of one
machine. Workers beyond the machine's cores cannot add throughput: on a 2-core machine 4 workers measure
contention, not the GPU machine's figure.

    python benchmarks/loader_throughput.py
    python benchmarks/loader_throughput.py --images 256 --sizes 256 --workers 0 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mtlbench import atomic
from mtlbench.environment import device_info, git_commit, versions
from mtlbench.tasks.thyroid.augment import AugmentConfig
from mtlbench.tasks.thyroid.cached_dataset import CachedThyroidDataset
from mtlbench.tasks.thyroid.preprocess import PreprocessedCache, build_cache
from mtlbench.tasks.thyroid.readers import ThyroidRecord

#: The issue's target: 4 workers feed at least this many 512 px images per second.
TARGET_IMAGES_PER_S = 400.0
TARGET_SIZE = 512
TARGET_WORKERS = 4


class SyntheticReader:
    """Random frames with an elliptical nodule, drawn from the record's index (picklable for spawn)."""

    name = "synthetic"

    def __init__(self, height: int, width: int) -> None:
        self.root = f"synthetic://{height}x{width}"
        self.height = height
        self.width = width

    def records(self, count: int) -> list[ThyroidRecord]:
        return [
            ThyroidRecord(
                f"syn{i:05d}", f"p{i // 4:05d}", self.name, "-", "-", index=i, size=(self.height, self.width)
            )
            for i in range(count)
        ]

    def load(self, record: ThyroidRecord) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(record.index)
        image = rng.integers(0, 256, (self.height, self.width), dtype=np.uint8)
        rows, cols = np.ogrid[: self.height, : self.width]
        cy, cx = self.height * rng.uniform(0.3, 0.7), self.width * rng.uniform(0.3, 0.7)
        ry, rx = self.height * rng.uniform(0.08, 0.2), self.width * rng.uniform(0.08, 0.2)
        mask = (((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0).astype(np.uint8)
        return image, mask


def make_dataset(cache: PreprocessedCache, augment: AugmentConfig | None) -> CachedThyroidDataset:
    n = len(cache)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, n)
    clinical = rng.normal(size=(n, 13)).astype(np.float32)
    return CachedThyroidDataset(cache, np.arange(n), labels, clinical, augment=augment, seed=0)


def time_loader(dataset: CachedThyroidDataset, workers: int, batch: int, batches: int, repeat: int) -> float:
    """Images per second over ``batches`` batches after a warm-up, from a fresh iterator."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        shuffle=True,
        generator=torch.Generator().manual_seed(repeat),
    )
    warmup = 2 * workers + 1
    if warmup + batches > len(loader):
        raise ValueError(
            f"need {warmup + batches} batches per repeat but an epoch has {len(loader)}: "
            "raise --images or lower --batches"
        )
    dataset.set_epoch(repeat)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        seen += len(next(iterator)["image"])
    elapsed = time.perf_counter() - start
    del iterator  # shuts the workers down
    return seen / elapsed


def time_getitem(dataset: CachedThyroidDataset, count: int = 64) -> float:
    """Median milliseconds of one ``__getitem__`` in this process (single-threaded, as in a worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]
        times = []
        for i in range(count):
            start = time.perf_counter()
            dataset[i % len(dataset)]
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times)


def spread(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def measure(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    height, width = args.source_size
    reader = SyntheticReader(height, width)
    records = reader.records(args.images)
    builds, rows, getitem = [], [], []
    for size in args.sizes:
        start = time.perf_counter()
        cache = build_cache(reader, records, size, cache_dir, workers=args.build_workers, progress=False)
        seconds = time.perf_counter() - start
        builds.append({"size": size, "seconds": seconds, "images_per_s": len(records) / seconds})
        augmented = make_dataset(cache, AugmentConfig())
        getitem.append(
            {
                "size": size,
                "augment_on_ms": time_getitem(augmented),
                "augment_off_ms": time_getitem(make_dataset(cache, None)),
            }
        )
        # Interleaved rounds: a slow drift of a shared machine hits every worker count alike.
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        for repeat in range(args.repeats):
            for workers in args.workers:
                rates[workers].append(time_loader(augmented, workers, args.batch, args.batches, repeat))
        for workers in args.workers:
            median = statistics.median(rates[workers])
            rows.append(
                {
                    "size": size,
                    "workers": workers,
                    "images_per_s": median,
                    "iqr_images_per_s": spread(rates[workers]),
                    "images_per_s_per_process": median / max(workers, 1),
                    "repeats": rates[workers],
                }
            )
            print(f"  {size} px, {workers} workers: {median:.1f} images/s", flush=True)
    return {"builds": builds, "getitem": getitem, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--source-size", type=int, nargs=2, default=(800, 1000), metavar=("H", "W"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=24, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--build-workers", type=int, default=None, help="default: every core")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loader_throughput.json"))
    args = parser.parse_args()

    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="mtlbench-loader-"))
    try:
        results = measure(args, cache_dir)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    target_row = next(
        (r for r in results["rows"] if r["size"] == TARGET_SIZE and r["workers"] == TARGET_WORKERS), None
    )
    report = {
        "benchmark": "loader_throughput",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "augment": {k: v for k, v in vars(AugmentConfig()).items()},
        "device": device_info(torch.device("cpu")),
        "usable_cores": cores,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions(),
        "git_commit": git_commit(),
        "target": {
            "size": TARGET_SIZE,
            "workers": TARGET_WORKERS,
            "images_per_s": TARGET_IMAGES_PER_S,
            "measured": None if target_row is None else target_row["images_per_s"],
            "met": None if target_row is None else target_row["images_per_s"] >= TARGET_IMAGES_PER_S,
        },
        **results,
    }
    atomic.write_json(args.out, report)

    print(f"machine: {report['device']['cpu']}, {cores} usable cores, load {report['load_average']}")
    print(f"{'size':>6}{'build img/s':>13}{'getitem ms (aug on / off)':>28}")
    for build, item in zip(results["builds"], results["getitem"]):
        print(
            f"{build['size']:>6}{build['images_per_s']:>13.1f}"
            f"{item['augment_on_ms']:>18.2f} / {item['augment_off_ms']:<7.2f}"
        )
    print(f"{'size':>6}{'workers':>9}{'images/s':>10}{'IQR':>8}{'per process':>13}")
    for r in results["rows"]:
        print(
            f"{r['size']:>6}{r['workers']:>9}{r['images_per_s']:>10.1f}{r['iqr_images_per_s']:>8.1f}"
            f"{r['images_per_s_per_process']:>13.1f}"
        )
    target = report["target"]
    if target["measured"] is not None:
        verdict = "met" if target["met"] else "not met on this machine"
        print(
            f"target {TARGET_IMAGES_PER_S:.0f} images/s at {TARGET_SIZE} px with {TARGET_WORKERS} workers: "
            f"{target['measured']:.1f} ({verdict})"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
