"""A real full disk: the store on a small tmpfs (mounting one needs root; skipped otherwise)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import Store

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB filesystem at tmp_path/disk, grown with small_disk.grow(kib)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    class Disk:
        root = mount

        def grow(self, kib: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mount)], check=True)

        def fill(self, leave_kib: int) -> None:
            free = shutil.disk_usage(mount).free // 1024
            with open(mount / "filler", "wb") as filler:
                filler.write(b"\0" * (free - leave_kib) * 1024)

    yield Disk()
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _one_error_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    return line


def test_a_full_disk_while_the_store_is_created_leaves_no_half_made_store(small_disk):
    store = Store(small_disk.root)  # 400 KiB: less than a new store's ~950 KiB
    line = _one_error_line(store.train("trainer.epochs=1", check=False))
    assert "could not be created" in line and "disk is full" in line
    assert not (small_disk.root / "mlflow.db").exists()  # nothing half-made to trip on later
    small_disk.grow(8192)  # space freed: the next command simply creates it
    store.train("trainer.epochs=1")
    (run,) = store.runs()
    assert run.info.status == "FINISHED"


def test_a_disk_filled_mid_run_fails_the_run_in_one_line(small_disk, template_store):
    small_disk.grow(8192)
    shutil.copy(template_store, small_disk.root / "mlflow.db")
    store = Store(small_disk.root)
    store.train_here("trainer.epochs=1", "tracking.log_plots=false")  # a run already there
    small_disk.fill(leave_kib=300)  # room for the run, not for its 3000 epochs
    result = store.train("dataset.num_samples=2000", "trainer.batch_size=2000",
                         "trainer.epochs=3000", check=False)  # fmt: skip
    assert "disk is full" in _one_error_line(result)
    (small_disk.root / "filler").unlink()
    runs = store.runs()
    assert len(runs) == 2 and "RUNNING" not in {r.info.status for r in runs}
    (failed,) = [r for r in runs if r.info.status != "FINISHED"]
    assert failed.info.status == "FAILED"  # never FINISHED with its metrics missing
    assert "disk is full" in failed.data.tags["linreg.failure"]
    store.train_here("trainer.epochs=1")  # the store still takes runs
    assert len(store.runs()) == 3
