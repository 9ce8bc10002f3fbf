"""read_seqno(vg, fresh) functions for MetadataGuard, as the bench uses."""
import types

try:
    from coordinator.lvm import mda
except ImportError:  # the fast reader is optional: fall back to vgs
    mda = None


def reader(shared, host=0):
    """(name, read_seqno): the O_DIRECT mda reader, else ``vgs``."""
    lvm = shared.hosts[host].lvm
    if mda is not None:
        device = shared.device
        return 'mda', lambda vg, fresh: mda.read(device).seqno
    return 'vgs', lambda vg, fresh: lvm.vg(vg)['seqno']


def daemon_reader(shared, host=0):
    """HostContext.read_seqno bound to this host's executor, or None."""
    try:
        from coordinator.host import HostContext
    except ImportError:
        return None
    ctx = types.SimpleNamespace(lvm=shared.hosts[host].lvm, _pv_cache={})
    return lambda vg, fresh: HostContext.read_seqno(ctx, vg, fresh)
