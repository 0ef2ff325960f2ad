"""``python -m facrnn.cli.compare`` on a tiny fake sweep, and its statistics against scipy."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from facrnn.cli import compare
from facrnn.evaluation.settings import EvalSettings
from facrnn.runs.pipeline import train
from tests.helpers import TINY_DATA, compose_config

METHODS = ("facrnn", "lrrnn")
SEEDS = (0, 1)
BETAS = ("1.18", "8.07")
# quick scoring for the tests of caching and naming: one posterior sample, no rollouts, no figures
QUICK = ["--no-figures", "--posthoc", "--n-mc", "1", "--no-dynamics"]


def tiny_run(root: Path, run_name: str, *overrides: str) -> None:
    """Train a 2-epoch run on tiny synthetic data into ``root/run_name``, without evaluating it."""
    base = [*TINY_DATA, "logger=csv", "threads=1", "experiment=synthetic_benchmark", "debug=short", "evaluate=false"]
    train(compose_config("train", [*base, *overrides], root, run_name=run_name))


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 methods x 2 seeds, 2 epochs each, trained without evaluation (compare must evaluate)."""
    root = tmp_path_factory.mktemp("compare")
    for method in METHODS:
        for seed in SEEDS:
            tiny_run(root, f"sweep/{method}_seed{seed}", f"model={method}", f"seed={seed}")
    return root / "sweep"


@pytest.fixture(scope="module")
def beta_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Optuna-like β sweep: two FacRNN runs that differ only in ``model.beta`` (same seed)."""
    root = tmp_path_factory.mktemp("compare_beta")
    for beta in BETAS:
        tiny_run(root, f"beta/trial_beta{beta}", "model=facrnn", f"model.beta={beta}", "seed=0")
    return root / "beta"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_compare_produces_every_output(fake_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, page = tmp_path / "comparison", tmp_path / "docs" / "results.md"
    args = [str(fake_sweep), "--out", str(out), "--markdown", str(page), "--rollout-steps", "3", "--n-mc", "2"]
    assert compare.main(args) == 0

    rows = read_rows(out / "results.csv")
    assert sorted((row["method"], int(row["seed"])) for row in rows) == sorted(
        (method, seed) for method in ("facrnn", "lrrnn", "lrrnn_ica", "lint") for seed in SEEDS
    )
    assert {row["dataset"] for row in rows} == {"synthetic"}
    for row in rows:
        for metric in ("partial_corr", "group_latent_r2", "connectivity_r2", "perm_group_latent_r2_max"):
            assert math.isfinite(float(row[metric])), (row["method"], metric)
    # Post-hoc variants are exact re-parametrisations: same W and reconstruction as their lrRNN.
    by_key = {(row["method"], row["seed"]): row for row in rows}
    for seed in SEEDS:
        for variant in ("lrrnn_ica", "lint"):
            for metric in ("connectivity_rmse", "recon_r2"):
                assert float(by_key[variant, str(seed)][metric]) == pytest.approx(
                    float(by_key["lrrnn", str(seed)][metric]), rel=1e-4, abs=1e-6
                )
    # Permutation analysis: 10 splits of 2 x 3 per run, cached next to the metrics.
    permutation = json.loads((fake_sweep / "lrrnn_seed0" / "posthoc_svd" / "permutation.json").read_text())
    assert len(permutation["scores"]) == 10
    assert float(by_key["lint", "0"]["perm_group_latent_r2_max"]) == pytest.approx(max(permutation["scores"]))
    assert (fake_sweep / "facrnn_seed1" / "metrics.json").is_file()  # unevaluated runs got evaluated

    summary = (out / "summary.md").read_text()
    assert "Paired t-tests" in summary and "| partial_corr |" in summary and "± " in summary
    assert "python -m facrnn.cli.compare" in summary
    for name in ("metrics_boxplots", "rollout_r2", "latent_overlays", "connectivity_grid", "permutation_boxplots"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert (page.parent / "results" / f"{name}.png").is_file()
        assert f"(results/{name}.png)" in page.read_text()
    assert "Headline comparisons" in capsys.readouterr().out

    # A second call with the same settings reuses the cached scores (nothing re-evaluated) and gives the same table.
    stamp = (fake_sweep / "lrrnn_seed0" / "posthoc_ica" / "metrics.json").stat().st_mtime_ns
    same = ["--rollout-steps", "3", "--n-mc", "2", "--no-figures"]
    assert compare.main([str(fake_sweep), "--out", str(tmp_path / "again"), *same]) == 0
    assert (fake_sweep / "lrrnn_seed0" / "posthoc_ica" / "metrics.json").stat().st_mtime_ns == stamp
    again = read_rows(tmp_path / "again" / "results.csv")
    assert [row["partial_corr"] for row in again] == [row["partial_corr"] for row in rows]

    # A checkpoint newer than the cached scores (a run still training, or retrained) is re-scored.
    checkpoint = fake_sweep / "lrrnn_seed0" / "checkpoints" / "best.ckpt"
    later = (fake_sweep / "lrrnn_seed0" / "posthoc_ica" / "metrics.json").stat().st_mtime + 10
    os.utime(checkpoint, (later, later))
    assert compare.main([str(fake_sweep), "--out", str(tmp_path / "again"), *same]) == 0
    for cached in ("metrics.json", "posthoc_ica/metrics.json", "posthoc_svd/permutation.json"):
        assert (fake_sweep / "lrrnn_seed0" / cached).stat().st_mtime >= later - 10, cached
    assert (fake_sweep / "lrrnn_seed1" / "posthoc_ica" / "metrics.json").stat().st_mtime_ns < later * 1e9


def test_compare_rejects_a_directory_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="no training runs found"):
        compare.collect([tmp_path], EvalSettings())
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path}: no training runs found; expected folders with config.yaml and checkpoints/\n"
    )


@pytest.mark.parametrize("what", ["missing", "file"])
def test_compare_names_a_bad_directory_in_one_line(tmp_path: Path, what: str, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "doesnotexist"
    if what == "file":
        path.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(path), "--no-figures"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    problem = "no such directory" if what == "missing" else "not a directory"
    assert err == f"error: {path}: {problem}; expected a sweep (multirun) directory or a run directory written by train.py\n"


# ----------------------------------------------------------------- naming of methods


def test_a_beta_sweep_gives_one_row_per_beta(beta_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "comparison"
    assert compare.main([str(beta_sweep), "--out", str(out), *QUICK]) == 0
    rows = read_rows(out / "results.csv")
    assert sorted(row["method"] for row in rows) == [f"facrnn[model.beta={beta}]" for beta in BETAS]
    assert {row["dataset"] for row in rows} == {"synthetic"}
    summary = (out / "summary.md").read_text()
    assert "| metric | facrnn[model.beta=1.18] | facrnn[model.beta=8.07] |" in summary
    assert "(n=2)" not in summary and "(n=1)" in summary


def config(output_dir: str, **model: object) -> dict:
    """A run's config.yaml, as far as :func:`compare.comparable_config` is concerned."""
    return {
        "seed": model.pop("seed", 0),
        "optimized_metric": "val/loss",
        "paths": {"output_dir": output_dir, "root_dir": "/root"},
        "hydra": {"job": {"num": output_dir}},
        "trainer": {"default_root_dir": output_dir, "max_epochs": 2},
        "callbacks": {"model_checkpoint": {"dirpath": f"{output_dir}/checkpoints"}},
        "datamodule": {"cache_dir": "/root/data/cache"},
        "model": {"name": "facrnn", "lr": 1e-3, **model},
    }


def test_runs_differing_by_seed_and_directory_only_compare_equal() -> None:
    first = compare.comparable_config(config("/sweep/0", seed=0, beta=20.0))
    second = compare.comparable_config(config("/elsewhere/sweep/1", seed=3, beta=20))
    assert first == second
    assert first["trainer.default_root_dir"] == "${paths.output_dir}"
    assert not any(key.startswith("callbacks.") for key in first)  # callbacks: how a run is launched
    assert not {"seed", "optimized_metric", "paths.output_dir", "hydra.job.num"} & set(first)
    assert compare.config_labels([first, second]) == ["", ""]
    # a replica of a model.replicas run keeps its training job's directories
    replica = config("/sweep/0", seed=1, beta=20.0)
    replica.update(replica_of="/sweep/0", paths={"output_dir": "/sweep/0/replica_01_seed1", "root_dir": "/root"})
    assert compare.comparable_config(replica) == first


def test_config_labels_name_the_differing_keys_only() -> None:
    configs = [
        compare.comparable_config(config(f"/sweep/{i}", seed=i % 2, beta=beta, **extra))
        for i, (beta, extra) in enumerate([(1.18, {}), (1.18, {}), (8.0712, {"rank": [1, 2]}), (1.1812345, {})])
    ]
    # 3 significant digits unless more are needed to keep values apart (1.18 vs 1.1812345)
    assert compare.config_labels(configs) == [
        "[model.beta=1.18,model.rank=unset]",
        "[model.beta=1.18,model.rank=unset]",
        "[model.beta=8.071,model.rank=[1, 2]]",
        "[model.beta=1.181,model.rank=unset]",
    ]


def test_datamodule_differences_label_the_data_set_and_others_the_method() -> None:
    from omegaconf import OmegaConf

    def run(name: str, n_steps: int, lr: float, seed: int) -> dict:
        cfg = config(f"/sweep/{name}", seed=seed, name=name.split("_")[0], lr=lr)
        cfg["datamodule"].update(_target_="datamodules.synthetic.SyntheticDataModule", n_steps=n_steps)
        return OmegaConf.create(cfg)

    configs = {
        Path("facrnn_a"): run("facrnn_a", 400, 1e-3, 0),
        Path("facrnn_b"): run("facrnn_b", 400, 1e-3, 1),
        Path("facrnn_c"): run("facrnn_c", 800, 3e-3, 0),
        Path("lrrnn_a"): run("lrrnn_a", 400, 1e-3, 0),
        Path("lrrnn_b"): run("lrrnn_b", 400, 2e-3, 1),
    }
    assert compare.name_runs(configs) == {
        Path("facrnn_a"): ("facrnn", "synthetic[datamodule.n_steps=400]"),
        Path("facrnn_b"): ("facrnn", "synthetic[datamodule.n_steps=400]"),
        Path("facrnn_c"): ("facrnn", "synthetic[datamodule.n_steps=800]"),  # alone on its data set: no label
        Path("lrrnn_a"): ("lrrnn[model.lr=0.001]", "synthetic[datamodule.n_steps=400]"),
        Path("lrrnn_b"): ("lrrnn[model.lr=0.002]", "synthetic[datamodule.n_steps=400]"),
    }
    assert sorted(["lrrnn", "facrnn[model.beta=8.07]", "zeta", "facrnn"], key=compare.method_sort_key) == [
        "facrnn",
        "facrnn[model.beta=8.07]",
        "lrrnn",
        "zeta",
    ]


# ----------------------------------------------------------------------- statistics


def fixed_rows() -> list[dict]:
    reference = {0: 0.91, 1: 0.85, 2: 0.88, 3: 0.95, 4: 0.80}
    baseline = {0: 0.70, 1: 0.74, 2: 0.66, 3: 0.81, 4: 0.69, 7: 0.10}  # seed 7 has no partner
    rows = [{"method": "facrnn", "seed": s, "dataset": "d", "run_dir": "", "r2": v} for s, v in reference.items()]
    rows += [{"method": "lrrnn", "seed": s, "dataset": "d", "run_dir": "", "r2": v} for s, v in baseline.items()]
    return rows[::-1]  # order must not matter


def test_paired_tests_match_scipy_paired_by_seed() -> None:
    [result] = compare.paired_tests(fixed_rows(), "facrnn", ["lrrnn"], ["r2"])
    expected = stats.ttest_rel([0.91, 0.85, 0.88, 0.95, 0.80], [0.70, 0.74, 0.66, 0.81, 0.69])
    assert result["n"] == 5
    assert result["t"] == pytest.approx(expected.statistic, rel=1e-12)
    assert result["p"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert (result["t"], result["p"]) == (
        pytest.approx(6.5948, rel=1e-4),
        pytest.approx(0.0027387, rel=1e-4),
    )  # by hand: mean 0.158, SE 0.02396
    assert result["mean_diff"] == pytest.approx(np.mean([0.21, 0.11, 0.22, 0.14, 0.11]))


def test_paired_tests_need_two_pairs() -> None:
    rows = [
        {"method": "facrnn", "seed": 0, "dataset": "d", "run_dir": "", "r2": 1.0},
        {"method": "lrrnn", "seed": 0, "dataset": "d", "run_dir": "", "r2": 0.5},
    ]
    [result] = compare.paired_tests(rows, "facrnn", ["lrrnn"], ["r2"])
    assert result["n"] == 1 and math.isnan(result["p"])


def test_summarise_mean_and_standard_error() -> None:
    summary = compare.summarise(fixed_rows(), ["r2"])
    values = np.array([0.70, 0.74, 0.66, 0.81, 0.69, 0.10])
    mean, se, n = summary["lrrnn"]["r2"]
    assert (mean, n) == (pytest.approx(values.mean()), 6)
    assert se == pytest.approx(values.std(ddof=1) / np.sqrt(6))
    assert list(summary) == ["facrnn", "lrrnn"]


def test_method_names_mark_the_mlp_variant() -> None:
    assert compare.method_name({"name": "facrnn", "encoder": "mlp", "decoder": "mlp"}) == "facrnn_mlp"
    assert compare.method_name({"name": "lrrnn"}) == "lrrnn"
    assert compare.dataset_name({"_target_": "datamodules.synthetic.SyntheticDataModule"}) == "synthetic"


def test_synthetic_benchmark_sweeps_the_four_trained_methods_over_five_seeds(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=synthetic_benchmark"], tmp_path)
    params = cfg.hydra.sweeper.params
    assert sorted(params.model.split(",")) == ["bdrnn", "facrnn", "facrnn_full", "lrrnn"]
    assert params.seed == "range(0,5)"
    assert cfg.evaluate is True
    # the paper's settings (experiment=synthetic_paper)
    assert (cfg.trainer.max_epochs, cfg.model.lr, cfg.model.optimizer, cfg.datamodule.batch_size) == (5000, 1e-3, "adamw", 128)
    assert cfg.model.latent_dim == 6 and cfg.model.n_groups == 2


def test_sweep_command_of_replica_runs_is_their_parent_jobs(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    variants = []
    for method in ("facrnn", "lrrnn"):
        job = tmp_path / "sweep" / f"{method}_seed0"
        (job / ".hydra").mkdir(parents=True)
        OmegaConf.save(
            OmegaConf.create([f"model={method}", "seed=0", "experiment=synthetic_benchmark", "model.replicas=2"]),
            job / ".hydra" / "overrides.yaml",
        )
        OmegaConf.save(OmegaConf.create({"seed": 0}), job / "config.yaml")
        for replica in range(2):
            run_dir = job / f"replica_{replica:02d}_seed{replica}"
            run_dir.mkdir()
            OmegaConf.save(OmegaConf.create({"seed": replica, "replica_of": str(job)}), run_dir / "config.yaml")
            variants.append(compare.RunVariant(run_dir, method, replica, "synthetic"))
    assert compare.training_job_dir(variants[0].run_dir) == tmp_path / "sweep" / "facrnn_seed0"
    (command,) = compare.sweep_commands(variants)
    assert command.startswith("python train.py -m experiment=synthetic_benchmark model.replicas=2 model=facrnn,lrrnn seed=0 ")
    assert command.endswith(f"hydra.sweep.dir={tmp_path / 'sweep'}")


# ------------------------------------------------------------------------ caching


def test_metrics_are_cached_per_split_checkpoint_and_settings(
    beta_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facrnn.runs import pipeline

    run = tmp_path / "sweep" / "run"
    shutil.copytree(beta_sweep / f"trial_beta{BETAS[0]}", run)
    sweep = [str(run.parent), "--out", str(tmp_path / "comparison"), *QUICK]
    assert compare.main(sweep) == 0  # test split, best checkpoint: metrics.json
    test_metrics = run / "metrics.json"
    before = (test_metrics.read_bytes(), test_metrics.stat().st_mtime_ns)

    calls: list[EvalSettings] = []
    evaluate_run = pipeline.evaluate_run

    def spy(run_dir: Path, settings: EvalSettings, datamodule: object = None) -> object:
        calls.append(settings)
        return evaluate_run(run_dir, settings, datamodule=datamodule)

    monkeypatch.setattr(pipeline, "evaluate_run", spy)
    assert compare.main([*sweep, "--split", "val"]) == 0  # another split: evaluated into its own file
    assert [settings.split for settings in calls] == ["val"]
    provenance = json.loads((run / "metrics_val_best.json").read_text())["provenance"]
    assert (provenance["split"], provenance["checkpoint"]["which"], provenance["n_mc"]) == ("val", "best", 1)
    assert json.loads((run / "permutation_val_best.json").read_text())["provenance"]["split"] == "val"
    assert (test_metrics.read_bytes(), test_metrics.stat().st_mtime_ns) == before

    assert compare.main([*sweep, "--split", "val"]) == 0  # the same settings again: reused
    assert len(calls) == 1
    assert compare.main([*sweep, "--split", "val", "--n-mc", "2"]) == 0  # other settings: evaluated again
    assert [settings.n_mc for settings in calls] == [1, 2]
    assert json.loads((run / "metrics_val_best.json").read_text())["provenance"]["n_mc"] == 2
    assert json.loads((run / "permutation_val_best.json").read_text())["provenance"]["n_mc"] == 2

    # metrics without a provenance record (an older version's) are outdated
    record = json.loads(test_metrics.read_text())
    del record["provenance"]
    test_metrics.write_text(json.dumps(record))
    assert compare.main(sweep) == 0
    assert [settings.split for settings in calls] == ["val", "val", "test"]
    assert json.loads(test_metrics.read_text())["provenance"]["split"] == "test"
