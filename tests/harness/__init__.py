"""A Kubernetes cluster without a cluster, for the operator's end-to-end tests.

- `emulator`: kmock's API server emulator, fixed (see its docstring), over real HTTP
  in its own thread (`ApiServer`);
- `jobcontroller`, `kubelet`, `podenv`: batch/v1 Jobs become pods, pods become local
  processes (or fakes: pending, evicted, OOM-killed);
- `client`: the `ClusterClient` interface the scenarios use, and `EmulatedCluster`;
- `operator_runner`: the operator in a thread or its own process, restartable.
"""
