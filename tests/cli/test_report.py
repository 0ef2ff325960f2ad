"""The terminal metrics table."""

from facrnn.cli.report import format_metrics


def test_table_lists_metrics_and_hides_per_horizon_rows() -> None:
    table = format_metrics({"recon_r2": 0.5, "rollout_r2_k1": 0.9, "rollout_r2_k2": 0.8, "rollout_r2_auc": 0.85}, "held-out")
    assert "recon_r2" in table and "0.5000" in table and "rollout_r2_auc" in table
    assert "rollout_r2_k1 " not in table.replace("such as rollout_r2_k1 in", "")
    assert "(+2 per-horizon values" in table
