"""Benchmarks of lvmcoord against real etcd and real LVM."""
import warnings

# etcd3gw imports futurist, which imports eventlet only to warn about it.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
