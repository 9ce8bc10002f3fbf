"""Nova's host names (``connector['host']``, its CONF.host) to lvmcoord's.

Nova names a compute host by its CONF.host (often the FQDN, sometimes an
inventory name); lvmcoord names it by ``[DEFAULT] host`` of lvmcoord.conf.
The driver must route an attach to the daemon of the machine Nova means.
"""
import socket


class UnknownHost(Exception):
    """No lvmcoord host matches; the message names the known ones."""


def short(name):
    """The first label of a host name."""
    return name.split('.', 1)[0]


def local_names():
    """The names this machine calls itself (Cinder's own connectors use
    socket.gethostname())."""
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return {n for n in names if n}


def resolve(name, known, here=None, aliases=None, mine=()):
    """(lvmcoord host, rule) for Nova's host ``name``.

    Rules, first match wins: the alias map (explicit configuration);
    an exact known name; this machine's own names (``mine``) -> ``here``,
    the local daemon; the short name against a known short name or FQDN
    (only when one side is short: two FQDNs in different domains are
    different hosts). ``known`` None means the daemon could not list its
    hosts: the name is passed through as it is.
    """
    aliases = aliases or {}
    if name in aliases:
        return aliases[name], 'alias map'
    if known is None:
        return name, 'unchecked'
    known = set(known) | ({here} if here else set())
    if name in known:
        return name, 'exact'
    if here and name in mine:
        return here, 'this machine'
    matches = sorted(k for k in known if short(k) == short(name)
                     and ('.' not in k or '.' not in name))
    if len(matches) == 1:
        return matches[0], 'short name'
    listed = ', '.join(sorted(known)) or 'none'
    if matches:
        raise UnknownHost(
            f'host {name!r} matches several lvmcoord hosts by short name '
            f'({", ".join(matches)}); map it with lvmcoord_host_map')
    raise UnknownHost(
        f'host {name!r} is not an lvmcoord host (known: {listed}); set '
        f'lvmcoord.conf [DEFAULT] host to the name Nova uses (its '
        f'CONF.host), or map it with lvmcoord_host_map = {name}:<lvmcoord '
        f'host>')
