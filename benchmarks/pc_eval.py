"""Time and peak memory of the evaluation partial-correlation estimator
(:func:`facrnn.core.partial_correlation.partial_correlation_eval`, chunked streaming), each
case in a fresh process so its peak RSS is its own.

    python -m benchmarks.pc_eval                 # n = 2,352 (M1) in full; 20k and 100k on a 5k-sample subsample
    python -m benchmarks.pc_eval --full          # 100k in full too (hours on 2 cores)
    python -m benchmarks.pc_eval --sizes 2352 --latent-dims 4 --check   # + unchunked agreement

Groups: K = 4 as 2 x 2, K = 8 as 2 x 4; n_mc = 10 posterior samples per point (float64, as
in evaluation). A subsampled case averages over ``max_samples`` of the ``n_mc n`` samples
with all ``n`` points as kernel centres, so its memory is that of the full estimate and its
time scales linearly to the full one (reported as ``time (full, extrapolated)``).
The naive (n_mc n) x n x K float64 tensor is listed for comparison.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import machine_description, print_table, run_in_child


def eval_case(n: int, latent_dim: int, n_mc: int, max_samples: int | None, threads: int, unchunked: bool) -> dict[str, Any]:
    """One estimate on posterior means of a correlated Gaussian (runs in a child process);
    ``unchunked``: in one chunk, the naive memory footprint (for ``--check``)."""
    from facrnn.core.partial_correlation import partial_correlation_eval

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(n)
    noise = torch.randn(latent_dim, latent_dim, generator=generator, dtype=torch.float64)
    mixing = torch.eye(latent_dim, dtype=torch.float64) + 0.3 * noise
    means = torch.randn(n, latent_dim, generator=generator, dtype=torch.float64) @ mixing
    width = float(n) ** (-1.0 / (latent_dim + 4))
    group_sizes = [latent_dim // 2] * 2
    started = time.perf_counter()
    chunk_size = 10**12 if unchunked else None
    value = partial_correlation_eval(
        means, width, group_sizes, n_mc=n_mc, seed=0, chunk_size=chunk_size, max_samples=max_samples
    )
    return {"value": value, "seconds": time.perf_counter() - started}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2352, 20000, 100000])
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--n-mc", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-up-to", type=int, default=2352, help="sizes above this run on a subsample")
    parser.add_argument("--subsample", type=int, default=5000, help="samples averaged for subsampled sizes")
    parser.add_argument("--full", action="store_true", help="no subsampling at any size")
    parser.add_argument("--check", action="store_true", help="also compare with the unchunked estimate (small n only)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f"machine: {machine_description()}; estimator threads: {args.threads}")
    rows = []
    for latent_dim in args.latent_dims:
        for n in args.sizes:
            n_samples = args.n_mc * n
            subsample = None if args.full or n <= args.full_up_to else min(args.subsample, n_samples)
            result = run_in_child(eval_case, n, latent_dim, args.n_mc, subsample, args.threads, False)
            used = subsample or n_samples
            full_seconds = result["seconds"] * n_samples / used
            naive_gib = n_samples * n * latent_dim * 8 / 2**30
            row = [
                n,
                latent_dim,
                args.n_mc,
                used,
                result["seconds"],
                full_seconds if subsample else result["seconds"],
                result["peak_rss_mib"],
                result["peak_rss_mib"] - result["baseline_rss_mib"],
                naive_gib,
                result["value"],
            ]
            if args.check:
                unchunked = run_in_child(eval_case, n, latent_dim, args.n_mc, subsample, args.threads, True)
                row += [unchunked["seconds"], unchunked["peak_rss_mib"], abs(result["value"] - unchunked["value"])]
            rows.append(row)
            print(
                f"n={n} K={latent_dim}: {result['seconds']:.2f} s on {used} samples, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    headers = [
        "n",
        "K",
        "n_mc",
        "samples used",
        "time s",
        "time s (full, extrapolated)",
        "peak RSS MiB",
        "peak - imports MiB",
        "naive tensor GiB",
        "PC",
    ]
    if args.check:
        headers += ["unchunked time s", "unchunked peak RSS MiB", "|chunked - unchunked|"]
    print_table(headers, rows, title="pc_eval: partial_correlation_eval, 2 equal groups, float64")


if __name__ == "__main__":
    main()
