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
