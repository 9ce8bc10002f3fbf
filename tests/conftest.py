"""Shared pytest fixtures: real etcd servers on 127.0.0.1."""
import pytest

from coordinator.sandbox.etcd import EtcdCluster


@pytest.fixture
def etcd_server():
    """A private single-member etcd, stopped after the test."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster3():
    """A private 3-member etcd cluster, stopped after the test."""
    with EtcdCluster(3) as cluster:
        yield cluster
