"""The session-wide fixtures of the real control plane (tests/cluster/fixtures.py), for every test folder."""

pytest_plugins = ["tests.cluster.fixtures"]
