"""The FineTuneJob lifecycle end to end: the real operator process, the real trainer in emulated pods."""

from __future__ import annotations

import json

from tests.e2e_emulated.conftest import condition, finetunejob, phase, termination


def test_apply_runs_reports_progress_and_succeeds_with_the_adapter_on_the_pvc(cluster, inputs):
    cluster.apply(finetunejob("happy", cluster, inputs, training={"maxSteps": 60}))
    running = cluster.wait_for("happy", lambda o: (o.get("status") or {}).get("progress", {}).get("step"),
                               120, "progress appears in status")
    assert running["status"]["phase"] == "Running" and condition(running, "Running")["status"] == "True"
    done = cluster.wait_for("happy", phase("Succeeded"), 180, "Succeeded")
    status = done["status"]
    assert status["restarts"] == 0 and status["preemptions"] == 0 and status["attempt"] == 0
    assert status["progress"]["percent"] == "100%"
    assert "output" in status, cluster.diagnose("happy")
    adapter = status["output"]["adapterPath"]
    assert adapter.startswith("/workspace/")  # the path as the pod sees it
    files = cluster.pvc_files("happy-data", adapter.removeprefix("/workspace/"))
    assert "adapter_config.json" in [f.rsplit("/", 1)[-1] for f in files]
    assert any(f.endswith("adapter_model.safetensors") for f in files)
    pod = cluster.children("happy", "pods")[0]
    message = json.loads(termination(pod)["message"])
    assert message["reason"] == "Completed" and message["output"]["adapterPath"] == adapter
    reasons = [e["reason"] for e in cluster.events("happy")]
    assert "Completed" in reasons or "Succeeded" in reasons, reasons
