"""flows.commands: DVC's JSON among its warnings, timeouts that stop what a command started, the summary a log keeps."""
import subprocess
import time

import pytest

from flows.commands import StageFailed, run_command, status_json, summary_lines
from tests.conftest import ROOT


def test_dvc_status_json_survives_warnings_and_rejects_garbage():
    done = subprocess.CompletedProcess([], 0, '{"train@A": []}\n',
                                       "WARNING: Process 'dvc repro' (Pid 9576) had been killed. Auto removed it\n")
    assert status_json(done) == {"train@A": []}
    assert status_json(subprocess.CompletedProcess([], 0, "", "")) == {}
    with pytest.raises(StageFailed, match="printed no JSON"):
        status_json(subprocess.CompletedProcess([], 0, "Expecting value\n", ""))


def test_commands_time_out_with_everything_they_started():
    import psutil

    start = time.time()
    with pytest.raises(StageFailed, match="did not finish within 1 s"):
        run_command(["bash", "-c", "sleep 300 & sleep 300"], ROOT, timeout=1)
    assert time.time() - start < 30
    for _ in range(100):  # a SIGKILLed process can take a moment to go on a loaded machine
        left = [p for p in psutil.process_iter(["cmdline", "status"])
                if p.info["cmdline"] == ["sleep", "300"] and p.info["status"] != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.1)
    assert not left


def test_stage_log_keeps_the_summary_not_the_noise():
    output = ("Running stage 'train@SmallCNN':\n> python -m pipeline.train --arch SmallCNN\n"
              + "I0000 00:00:17 port.cc:153] oneDNN custom operations are on.\n" * 40
              + "train@SmallCNN: val balanced accuracy 0.900 in 12s (6 epochs); MLflow run abc\n"
              + "E0000 use_unbounded_threadpool\n" * 40)
    lines = summary_lines(output, "train@SmallCNN")
    assert lines == ["Running stage 'train@SmallCNN':",
                     "train@SmallCNN: val balanced accuracy 0.900 in 12s (6 epochs); MLflow run abc"]
