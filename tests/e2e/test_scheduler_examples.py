"""The scheduler examples in jobs/schedulers/ treat exit codes as exits.py defines them."""

import os
import subprocess
from pathlib import Path

import yaml

from pipeline import exits

HERE = Path(__file__).resolve().parents[2] / "jobs" / "schedulers"


def fake_pipeline(tmp_path, codes):
    """A stand-in `pipeline` that exits with the next code of `codes` at each call."""
    state = tmp_path / "calls"
    script = tmp_path / "pipeline"
    script.write_text("#!/usr/bin/env bash\n"
                      f"n=$(cat {state} 2>/dev/null || echo 0); echo $((n+1)) > {state}\n"
                      f"codes=({' '.join(map(str, codes))}); exit ${{codes[$n]}}\n")
    script.chmod(0o755)
    return script, state


def test_nightly_wrapper_retries_only_incomplete_runs(tmp_path):
    for codes, want, calls in (([3, 3, 0], 0, 3), ([1], 1, 1), ([4], 4, 1), ([3, 3, 3, 3], 3, 4), ([2], 2, 1)):
        script, state = fake_pipeline(tmp_path, codes)
        state.unlink(missing_ok=True)
        res = subprocess.run([str(HERE / "nightly.sh"), "job.yaml"], capture_output=True, text=True,
                             env={**os.environ, "PIPELINE": str(script), "WAIT": "0"})
        assert res.returncode == want, res.stderr
        assert int(state.read_text()) == calls


def test_kubernetes_pod_failure_policy_matches_exit_codes():
    spec = yaml.safe_load((HERE / "k8s-cronjob.example.yaml").read_text())["spec"]["jobTemplate"]["spec"]
    rules = {r["action"]: set(r["onExitCodes"]["values"]) for r in spec["podFailurePolicy"]["rules"]}
    assert rules == {
        "FailJob": {exits.ERROR, exits.USAGE, exits.ENGINE_START, exits.TOO_MANY_BAD_ROWS},
        "Count": {exits.INCOMPLETE},
    }
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_airflow_dag_compiles_and_retries_only_incomplete():
    source = (HERE / "airflow_dag.py").read_text()
    compile(source, "airflow_dag.py", "exec")
    assert f"[ $code -eq {exits.INCOMPLETE} ]" in source and "skip_on_exit_code=99" in source
