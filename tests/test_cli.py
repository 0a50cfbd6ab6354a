import subprocess
import sys

import pytest

import deo
from deo.cli import main


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"deo {deo.__version__}"


def test_console_entry_point_is_installed():
    out = subprocess.run([sys.executable, "-m", "deo.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "usage: deo" in out


def test_bench_refuses_an_optimizer_outside_the_preset_before_any_run(tmp_path, capsys):
    from deo.cli import main

    out = tmp_path / "out"
    assert main(["bench", "--preset", "stability-slingshot", "--only", "adamw",
                 "--only", "sgd", "--out", str(out), "--no-progress"]) == 2
    assert "only: ['sgd'] is not among preset" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()
