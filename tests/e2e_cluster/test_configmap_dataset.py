"""A FineTuneJob that trains from a ConfigMap dataset: the operator mounts the key, the trainer reads it.

The real operator renders the `dataset.configMap` volume and KUBETUNE_DATASET_DIR, the
test kubelet materializes the ConfigMap's key like the real one, and the real
trainer finds the file there (kubetune_trainer.fetch) and trains on it.
"""

from __future__ import annotations

import json

from kubetune_api.contract import DATASET_CONFIGMAP_DIR

from tests.cluster.rest import path_of
from tests.e2e_cluster.scenarios import phase, termination


def test_a_job_trains_from_a_configmap_dataset(cluster, make, inputs):
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "reverse-data", "namespace": cluster.namespace},
        "data": {"train.jsonl": inputs.data.read_text(encoding="utf-8")},
    }
    cluster.rest.create(path_of("v1", "configmaps", cluster.namespace), configmap)
    manifest = make("from-configmap", training={"maxSteps": 10, "saveSteps": 10})
    manifest["spec"]["dataset"] = {
        "configMap": {"name": "reverse-data", "key": "train.jsonl"},
        "format": "prompt-completion",
        "validationSplit": 0.125,
    }
    cluster.apply(manifest)

    done = cluster.wait_for("from-configmap", phase("Succeeded"), 180, "Succeeded")

    assert done["status"]["restarts"] == 0 and done["status"]["progress"]["step"] == 10
    pod = cluster.children("from-configmap", "pods")[0]
    mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts[DATASET_CONFIGMAP_DIR]]["configMap"]["name"] == "reverse-data"
    assert json.loads(termination(pod)["message"])["reason"] == "Completed"
    # 96 rows, 12 held out: the trainer read the ConfigMap's rows, not some other file.
    assert "96 rows" in cluster.pod_log(pod["metadata"]["name"]), cluster.pod_log(pod["metadata"]["name"])[-2000:]
