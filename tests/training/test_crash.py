"""Crash safety: `pawnet train` killed with SIGKILL, scratch and transfer, then checked by
the crash-loop benchmark's own checks (a short loop; `benchmarks/crash_loop.py` runs 20)."""

from __future__ import annotations

import crash_loop


def test_killed_runs_resume_or_say_why_and_corrupt_nothing(tmp_path):
    result = crash_loop.crash_loop(runs=2, workdir=tmp_path, fractions=[0.85])
    assert result["broken"] == 0, result["details"]
    assert all(outcome == "finished" or outcome.startswith(("resumed", "refused", "killed"))
               for _, _, outcome in result["details"]), result["details"]
    assert result["caches_give_identical_runs"] == {"scratch": True, "transfer": True}
    assert result["photos_unchanged"]
    assert result["partial_leftovers"] == []
