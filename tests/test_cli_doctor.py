"""`mlpcore doctor` and `mlpcore train --monitor`, run as a user runs them: in a subprocess."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import write_idx_data_set

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def doctor(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mlpcore", "doctor", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def one_line_error(result):
    """Exit status 2 with one line on stderr, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    """A small data set in Fashion-MNIST's format, raw 0..255 pixels as stored."""
    return write_idx_data_set(tmp_path_factory.mktemp("data"), (("train", 300), ("t10k", 50)), high=256,
                              marked=False, compress=True)


def test_the_students_backprop_is_diagnosed_and_the_fixed_one_passes(tmp_path):
    broken = doctor(EXAMPLES / "student.py:backprop", "--sizes", 784, 300, 300, 10, cwd=tmp_path)
    assert broken.returncode == 1, broken.stderr
    assert "softmax-derivative (layer 2 weights)" in broken.stdout
    assert "relu-derivative-at-zero (layer 1 weights)" in broken.stdout
    assert "fix:" in broken.stdout
    fixed = doctor(EXAMPLES / "student_fixed.py:backprop", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "nothing found" in fixed.stdout


def test_the_students_batches_are_diagnosed_and_the_fixed_ones_pass(tmp_path):
    broken = doctor("--batches", EXAMPLES / "student.py:make_batches", cwd=tmp_path)
    assert broken.returncode == 1 and "labels-misaligned" in broken.stdout
    fixed = doctor("--batches", EXAMPLES / "student_fixed.py:make_batches", cwd=tmp_path)
    assert fixed.returncode == 0 and "nothing found" in fixed.stdout


def test_data_as_stored_and_from_an_npz(tmp_path, raw_data):
    raw = doctor("--data", raw_data, cwd=tmp_path)
    assert raw.returncode == 1 and "unscaled-inputs" in raw.stdout
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "clean.npz", X=rng.random((200, 5)), y=np.arange(200) % 4, X_test=rng.random((20, 5)))
    clean = doctor("--data", tmp_path / "clean.npz", cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout
    np.savez(tmp_path / "labels.npz", X=rng.random((200, 5)), y=np.arange(200) % 4 + 1)
    shifted = doctor("--data", tmp_path / "labels.npz", cwd=tmp_path)
    assert shifted.returncode == 1 and "labels-out-of-range" in shifted.stdout
    np.savez(tmp_path / "no_y.npz", X=rng.random((20, 5)))
    assert "has no array 'y'" in one_line_error(doctor("--data", tmp_path / "no_y.npz", cwd=tmp_path))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "cannot read" in one_line_error(doctor("--data", tmp_path / "junk.npz", cwd=tmp_path))
    assert "no such file" in one_line_error(doctor("--data", tmp_path / "absent", cwd=tmp_path))


def _write(folder, name, source):
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    assert "give one of" in one_line_error(doctor(cwd=tmp_path))
    both = doctor(EXAMPLES / "student.py:backprop", "--data", tmp_path, cwd=tmp_path)
    assert "got FILE.py:FUNCTION and --data" in one_line_error(both)
    assert "not a file" in one_line_error(doctor(tmp_path / "absent.py:f", cwd=tmp_path))
    assert "expected FILE.py:FUNCTION" in one_line_error(doctor(EXAMPLES / "student.py", cwd=tmp_path))
    assert "has no function 'nope'" in one_line_error(doctor(EXAMPLES / "student.py:nope", cwd=tmp_path))
    assert "minibatch_size is a int" in one_line_error(
        doctor(EXAMPLES / "student.py:minibatch_size", cwd=tmp_path))
    _write(tmp_path, "broken_import.py", "import numpy as np\nundefined_name + 1\n")
    message = one_line_error(doctor(tmp_path / "broken_import.py:f", cwd=tmp_path))
    assert "raised NameError when loaded" in message
    _write(tmp_path, "raises.py", """
        def backprop(W, X, Y):
            raise ZeroDivisionError("oops")
        def two_grads(W, X, Y):
            return 0.0, [w * 0 for w in W[:2]]
        def bad_shape(W, X, Y):
            return 0.0, [w.T for w in W]
    """)
    message = one_line_error(doctor(tmp_path / "raises.py:backprop", "--sizes", 6, 5, 3, cwd=tmp_path))
    assert "raises.py:backprop: the function raised ZeroDivisionError on a batch of 1 row: oops" in message
    message = one_line_error(doctor(tmp_path / "raises.py:two_grads", "--sizes", 6, 5, 4, 3, cwd=tmp_path))
    assert "returned 2 gradients for 3 layers" in message
    message = one_line_error(doctor(tmp_path / "raises.py:bad_shape", "--sizes", 6, 5, 3, cwd=tmp_path))
    assert "gradient 0 has shape (5, 7)" in message
    assert "--sizes" in one_line_error(doctor(tmp_path / "raises.py:backprop", "--sizes", 6, cwd=tmp_path))
    _write(tmp_path, "exits.py", "import sys\nsys.exit(5)\n")
    assert "called sys.exit(5) when loaded" in one_line_error(doctor(tmp_path / "exits.py:f", cwd=tmp_path))
    np.savez(tmp_path / "strings.npz", X=np.array([["a", "b"]]), y=np.array([1]))
    assert "must hold numbers" in one_line_error(doctor("--data", tmp_path / "strings.npz", cwd=tmp_path))
    assert "expected a positive integer, got 0" in one_line_error(
        doctor(tmp_path / "raises.py:backprop", "--sizes", 6, 0, cwd=tmp_path))


def test_the_users_file_may_import_its_neighbours(tmp_path):
    _write(tmp_path, "helpers.py", """
        from mlpcore import reference
        def loss_and_grads(W, X, Y):
            return reference.loss_and_gradients(W, X, Y)
    """)
    _write(tmp_path, "mine.py", """
        import helpers
        def backprop(W, X, Y):
            return helpers.loss_and_grads(W, X, Y)
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = doctor(tmp_path / "mine.py:backprop", "--sizes", 8, 6, 3, "--targets", "labels", cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr


def test_train_with_monitor_prints_the_health_of_each_epoch(tmp_path, raw_data):
    result = subprocess.run(
        [sys.executable, "-m", "mlpcore", "train", "--data", str(raw_data), "--epochs", "3", "--hidden", "16",
         "--preset", "student", "--monitor", "--out", str(tmp_path / "run")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("  monitor: dead ReLUs ") for line in lines) == 3
    assert any("doctor: warning: not-learning" in line for line in lines)
    assert any(line.startswith("monitor: ") and "not-learning" in line for line in lines)
