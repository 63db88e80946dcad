"""``binsearch serve``: refuses a file, and the CLI does not import the server until asked."""

from __future__ import annotations

import subprocess
import sys

from binsearch.cli.main import main


def test_serve_refuses_a_file(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("not an index")
    assert main(["serve", str(file)]) == 2
    assert "is a file, not a collection directory" in capsys.readouterr().err


def test_the_cli_module_does_not_import_the_server():
    code = "import sys, binsearch.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'server'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
