"""The KubeTune API: what the operator and the trainer share, and nothing that needs torch.

- `recipe`: the FineTuneJob model (spec and status), the single source of the CRD's schema;
- `conditions`: the status condition types and the reasons each of them may carry;
- `contract`: paths, env vars, exit codes and termination reasons between pods and the trainer;
- `metric_specs`: the names of every exported Prometheus metric;
- `manifest`: reading FineTuneJob manifests from YAML or JSON files.

The operator imports this package and, of the trainer's, only what `kubetune run` and
`kubetune generate` need, lazily (tests/operator/test_imports.py checks it).
"""
