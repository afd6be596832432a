"""gpu_check.sh runs on a GPU machine, often with one try: its flags and its files must work here first."""
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# the script needs GNU coreutils' timeout (macOS has none unless installed); the GPU machine and CI have it
pytestmark = pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout") and shutil.which("tar")),
                                reason="gpu_check.sh needs bash, timeout and tar")


def test_gpu_check_runs_every_step_and_keeps_its_files(tmp_path):
    env = dict(os.environ, PY=sys.executable, PRESET="tiny", DEVICE="cpu", DEADLINE="300", SWEEP="8 64", MODES="eager",
               OUT=str(tmp_path / "out"), RUN=str(tmp_path / "run"))
    res = subprocess.run(["bash", "gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for step in ("train", "bench", "compare"):
        assert f"[gpu_check] {step}: exit 0" in res.stdout, res.stdout
    # three files: few to copy back
    assert sorted(os.listdir(tmp_path / "out")) == ["gpu.log", "report.md", "results.tar.gz"]
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert "images/s" in log and "ms/step" in log and "Traceback" not in log
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        names = {pathlib.Path(n).name for n in tar.getnames()}
    assert {"gpu.log", "report.md", "metrics.jsonl", "compare.png", "samples_rl.png"} <= names
    assert not any(n.endswith(".pt") for n in names)  # no weights
    assert "## Critical steps and tokens" in (tmp_path / "out" / "report.md").read_text()  # the comparison's table


def test_gpu_check_stops_at_its_deadline_and_still_keeps_its_files(tmp_path):
    env = dict(os.environ, PY=sys.executable, PRESET="cpu", DEVICE="cpu", DEADLINE="20",
               OUT=str(tmp_path / "out"), RUN=str(tmp_path / "run"))
    res = subprocess.run(["bash", "gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "[gpu_check] bench: exit 124" in res.stdout and "rerun to go on" in res.stdout, res.stdout
    assert "[gpu_check] train: skipped" in res.stdout and "[gpu_check] compare: skipped" in res.stdout
    assert {"gpu.log", "results.tar.gz"} <= set(os.listdir(tmp_path / "out"))
