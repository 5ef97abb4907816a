"""Smoke test of benchmarks/evaluation.py (chapter 8's results): it runs the stated commands,
stores each summary with its command, and resumes without re-running what is recorded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mae_tutorial.checkpoint import save_checkpoint
from mae_tutorial.config import MAEConfig
from mae_tutorial.model import MaskedAutoencoder

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluation.py"


def load_script():
    spec = importlib.util.spec_from_file_location("evaluation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_evaluation_script_records_commands_and_resumes(
    tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script()
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    ckpt = save_checkpoint(
        tmp_path / "ref.pt", {"model": model.state_dict(), "config": model.config.to_dict()}
    )
    out = tmp_path / "evaluation.json"
    argv = ["--checkpoint", str(ckpt), "--data-dir", str(synthetic_root), "--out", str(out)]
    argv += ["--quick", "--jobs", "2"]
    assert script.main([*argv, "--only", "knn", "finetune_blocks1"]) == 0
    stored = json.loads(out.read_text())
    assert sorted(stored) == ["finetune_blocks1", "knn"]
    assert 0 <= stored["knn"]["result"]["knn_top1"] <= 100
    assert stored["finetune_blocks1"]["result"]["blocks"] == 1
    assert "--blocks 1" in stored["finetune_blocks1"]["command"]
    assert stored["knn"]["command"].startswith("OMP_NUM_THREADS=1 python -m mae_tutorial knn")
    # Without --only, what is recorded with the same command is skipped; a changed command is not.
    table = {name: script._quick(cmd) for name, cmd in script.runs(str(ckpt)).items()}
    todo = script.pending(table, stored, None)
    assert "knn" not in todo and "finetune_blocks1" not in todo
    assert {"linprobe", "finetune_all", "finetune_from_scratch"} <= set(todo)
    table["knn"] = [*table["knn"], "--seed", "1"]
    assert "knn" in script.pending(table, stored, None)
    with pytest.raises(SystemExit):
        script.main([*argv, "--only", "nope"])
    assert "unknown entries ['nope']" in capsys.readouterr().err


def test_a_quick_record_does_not_count_as_the_full_command() -> None:
    script = load_script()
    table = script.runs("ref.pt")
    quick = "OMP_NUM_THREADS=1 python -m mae_tutorial " + " ".join(script._quick(table["linprobe"]))
    assert "linprobe" in script.pending(table, {"linprobe": {"command": quick}}, None)
    full = "OMP_NUM_THREADS=1 python -m mae_tutorial linprobe --checkpoint ref.pt --data-dir d"
    assert "linprobe" not in script.pending(table, {"linprobe": {"command": full}}, None)
