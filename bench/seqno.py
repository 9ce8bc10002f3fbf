"""read_seqno(vg, fresh) functions for MetadataGuard, as the bench uses."""
from coordinator.lvm import mda
from coordinator.lvm import vgview


def reader(shared, host=0):
    """(name, read_seqno): the O_DIRECT metadata-area reader."""
    device = shared.device
    return 'mda', lambda vg, fresh: mda.read(device).seqno


def daemon_reader(shared, host=0):
    """The daemon's own read_seqno, bound to this host's executor."""
    return vgview.VGViews(shared.hosts[host].lvm).seqno
