"""The `mlpcore` command, run as a user runs it: in a subprocess."""
import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import mlpcore
from conftest import idx_bytes

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


def run(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "mlpcore", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A small data set in Fashion-MNIST's format: the class decides which image rows are bright."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 1200), ("t10k", 200)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k:2 * k + 3] += 150
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return folder


@pytest.fixture(scope="module")
def trained_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = run("train", "--epochs", 2, "--data", small_data, "--out", out, "--batch-size", 100,
                 "--lr", 0.1, cwd=out.parent)
    return result, out


def test_train_prints_epochs_and_saves_everything(trained_run):
    result, out = trained_run
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("epoch 1/2  train loss") for line in lines)
    assert any(line.startswith("epoch 2/2  train loss") for line in lines)
    assert "final test accuracy" in result.stdout and str(out) in result.stdout
    rows = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
                            "seconds"}
    with open(out / "history.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [float(r["test_accuracy"]) for r in csv_rows] == [r["test_accuracy"] for r in rows]
    net = mlpcore.load(out / "model.npz")
    assert net.layer_sizes == (784, 300, 300, 10)
    assert net.metadata["epochs_trained"] == 2
    assert net.metadata["settings"]["lr"] == 0.1
    assert net.metadata["final"] == rows[-1]
    # The data is easy: two epochs learn it well.
    assert rows[-1]["test_accuracy"] > 0.9
    # The recipe's schedule (cosine) has brought the learning rate down by the last epoch.
    assert rows[-1]["lr"] < rows[0]["lr"] <= 0.1


def test_train_takes_the_recipe_flags_and_the_students_preset(small_data, tmp_path):
    result = run("train", "--preset", "student", "--epochs", 2, "--data", small_data, "--out", tmp_path / "s",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    student = mlpcore.load(tmp_path / "s" / "model.npz").metadata["settings"]
    assert (student["optimizer"], student["batch_size"], student["init"]) == (
        "SGD(lr=0.001, momentum=0.0, nesterov=False, weight_decay=0.0)", 600, "normal")
    result = run("train", "--optimizer", "adamw", "--weight-decay", 0.05, "--schedule", "cosine", "--warmup",
                 0.2, "--dropout", 0.3, "--label-smoothing", 0.1, "--val-split", 0.2, "--patience", 1, "--epochs", 4, "--batch-size", 100, "--data",
                 small_data, "--out", tmp_path / "a", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "val loss" in result.stdout and "early stopping:" in result.stdout
    settings = mlpcore.load(tmp_path / "a" / "model.npz").metadata["settings"]
    assert settings["optimizer"].startswith("AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.05")
    assert settings["schedule"] == "Cosine(warmup=0.2, final=0.0)" and settings["val_split"] == 0.2
    assert (settings["dropout"], settings["label_smoothing"]) == (0.3, 0.1)
    assert "960 images" in result.stdout  # 1,200 less the fifth held out


def test_train_draws_curves(trained_run):
    pytest.importorskip("matplotlib")
    _, out = trained_run
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_without_matplotlib_still_succeeds(small_data, tmp_path):
    # A sitecustomize that hides matplotlib, as on a machine without the [plot] extra.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['matplotlib'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "mlpcore", "train", "--epochs", "1", "--hidden", "--data", str(small_data),
         "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pip install 'mlpcore[plot]'" in result.stdout
    assert not (tmp_path / "out" / "curves.png").exists()
    assert mlpcore.load(tmp_path / "out" / "model.npz").layer_sizes == (784, 10)


def test_default_output_folder_is_new_under_runs(small_data, tmp_path):
    for _ in range(2):
        result = run("train", "--epochs", 1, "--hidden", 20, "--data", small_data, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    assert all((r / "model.npz").exists() for r in runs)


def test_evaluate(trained_run, small_data, tmp_path):
    _, out = trained_run
    result = run("evaluate", out / "model.npz", "--data", small_data, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and "Ankle boot" in result.stdout
    matrix_lines = result.stdout.split("confusion matrix")[1].strip().splitlines()[2:]
    counts = np.array([[int(v) for v in line.split()[1:]] for line in matrix_lines])
    assert counts.shape == (10, 10) and counts.sum() == 200
    accuracy = float(result.stdout.split("test accuracy ")[1].split("%")[0])
    assert accuracy == pytest.approx(100 * np.trace(counts) / 200, abs=0.01)


def test_info(tmp_path):
    result = run("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"mlpcore {mlpcore.__version__}" in result.stdout
    assert "Fashion-MNIST:" in result.stdout and "threads" in result.stdout


@pytest.mark.parametrize("args,words", [
    (["train", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["train", "--lr", "fast"], "--lr: expected a positive number, got 'fast'"),
    (["train", "--lr", "-1"], "--lr: expected a finite number > 0"),
    (["train", "--optimizer", "adagrad"], "--optimizer: invalid choice: 'adagrad'"),
    (["train", "--momentum", "-0.5"], "--momentum: expected a number >= 0, got -0.5"),
    (["train", "--warmup", "1"], "--warmup: expected a fraction in [0, 1), got 1"),
    (["train", "--val-split", "x"], "--val-split: expected a fraction in [0, 1), got 'x'"),
    (["train", "--optimizer", "nesterov", "--momentum", "0"], "nesterov=True needs a momentum > 0"),
    (["train", "--patience", "0"], "--patience: expected a positive integer, got 0"),
    (["train", "--dropout", "1"], "--dropout: expected a fraction in [0, 1), got 1"),
    (["train", "--label-smoothing", "2"], "--label-smoothing: expected a fraction in [0, 1], got 2"),
    (["train", "--preset", "teacher"], "--preset: invalid choice: 'teacher'"),
    (["train", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["train", "--hidden", "300", "0"], "--hidden: expected a positive integer, got 0"),
    (["train", "--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["train", "--seed", "-1"], "--seed: expected a non-negative integer, got -1"),
    (["evaluate", "."], "is a folder"),
    (["evaluate", "missing.npz"], "missing.npz"),
    (["evaluate"], "the following arguments are required: model"),
    (["fly"], "invalid choice: 'fly'"),
    ([], "the following arguments are required: command"),
])
def test_bad_arguments_give_one_line_and_status_2(args, words, tmp_path):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_existing_model_is_not_overwritten_without_force(trained_run, small_data, tmp_path):
    _, out = trained_run
    before = (out / "model.npz").read_bytes()
    result = run("train", "--epochs", 1, "--data", small_data, "--out", out, cwd=tmp_path)
    assert result.returncode == 2 and "--force" in result.stderr
    assert (out / "model.npz").read_bytes() == before
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.npz").write_bytes(before)
    result = run("train", "--epochs", 1, "--hidden", 10, "--data", small_data, "--out", copy, "--force",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert mlpcore.load(copy / "model.npz").layer_sizes == (784, 10, 10)


def test_unwritable_output_folder(tmp_path, small_data):
    (tmp_path / "file").write_text("")
    result = run("train", "--epochs", 1, "--data", small_data, "--out", tmp_path / "file" / "out",
                 cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_divergence_keeps_the_last_finished_epoch(tmp_path, small_data):
    out = tmp_path / "out"
    result = run("train", "--epochs", 3, "--lr", "1e38", "--data", small_data, "--out", out,
                 "--hidden", 20, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    net = mlpcore.load(out / "model.npz")
    assert net.metadata["diverged"] is True
    assert net.metadata["epochs_trained"] == len(json.loads((out / "history.json").read_text()))
    assert all(np.isfinite(W).all() for W in net.weights)


def test_evaluate_rejects_a_file_that_is_not_a_model(tmp_path, small_data):
    (tmp_path / "notes.npz").write_text("hello")
    result = run("evaluate", tmp_path / "notes.npz", "--data", small_data, cwd=tmp_path)
    assert result.returncode == 2 and "not a readable mlpcore model file" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_rejects_a_regression_model(tmp_path, small_data):
    mlpcore.Network([784, 8, 10], loss="squared_error").save(tmp_path / "regression.npz")
    result = run("evaluate", tmp_path / "regression.npz", "--data", small_data, cwd=tmp_path)
    assert result.returncode == 2 and "loss='squared_error'" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_saves_the_last_finished_epoch(small_data, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlpcore", "train", "--epochs", "100000", "--hidden", "50",
         "--batch-size", "10", "--data", str(small_data), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    watchdog = threading.Timer(120, process.kill)  # never hang the test run
    watchdog.start()
    try:
        for line in process.stdout:
            if line.split()[:2] and line.split()[1].startswith("2/"):
                process.send_signal(signal.SIGINT)
                break
        stdout, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    rows = json.loads((out / "history.json").read_text())
    net = mlpcore.load(out / "model.npz")
    assert net.metadata["interrupted"] is True
    # The interrupt lands while epoch 2 is being reported at the latest: epoch 1 at least is kept, and
    # the model is exactly the epochs that history.json lists.
    assert net.metadata["epochs_trained"] == len(rows) >= 1
    assert net.metadata["final"] == rows[-1]


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs apt-get install dataset-fashion-mnist")
def test_default_network_learns_fashion_mnist(tmp_path):
    result = run("train", "--epochs", 2, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out" / "history.json").read_text())
    assert rows[-1]["test_accuracy"] >= 0.75
