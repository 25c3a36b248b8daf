import csv

from worldmodels.training.metrics_log import CsvLog


def read(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_widens_when_new_metrics_appear(tmp_path):
    log = CsvLog(tmp_path / "metrics.csv")
    log.write(1, {"train/loss": 2.0})
    log.write(2, {"train/loss": 1.5})
    log.write(2, {"eval/loss": 1.7})
    rows = read(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "2"]
    assert rows[0]["train/loss"] == "2.0" and rows[0]["eval/loss"] == ""
    assert rows[2]["eval/loss"] == "1.7"


def test_resume_drops_rows_past_the_checkpoint(tmp_path):
    log = CsvLog(tmp_path / "metrics.csv")
    for step in range(1, 6):
        log.write(step, {"train/loss": float(step)})
    resumed = CsvLog(tmp_path / "metrics.csv", resume_step=3)
    resumed.write(4, {"train/loss": 40.0})
    rows = read(tmp_path / "metrics.csv")
    assert [(r["step"], r["train/loss"]) for r in rows] == [("1", "1.0"), ("2", "2.0"), ("3", "3.0"), ("4", "40.0")]
