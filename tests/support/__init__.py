"""Test support, not shipped in the wheel: private Redis servers, clusters, Sentinel groups
and network namespaces on free ports (servers.py), used by the tests and by bench/."""
