"""read_seqno(vg, fresh) functions for MetadataGuard, as the bench uses."""
import types

from coordinator.daemon.host import HostContext
from coordinator.lvm import mda


def reader(shared, host=0):
    """(name, read_seqno): the O_DIRECT metadata-area reader."""
    device = shared.device
    return 'mda', lambda vg, fresh: mda.read(device).seqno


def daemon_reader(shared, host=0):
    """The daemon's own read_seqno, bound to this host's executor."""
    ctx = types.SimpleNamespace(lvm=shared.hosts[host].lvm, _pv_cache={})
    return lambda vg, fresh: HostContext.read_seqno(ctx, vg, fresh)
