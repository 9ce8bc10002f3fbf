"""Request validation: every field checked before anything runs.

A request is ``{"op": NAME, "args": {...}}``. Each op lists its fields and
their validators; unknown ops and unknown or missing fields are refused
with an error naming the field.
"""
from coordinator import errors
from coordinator.engine import modes
from coordinator.lvm import names

MAX_BODY = 64 * 1024


def _bool(value, field):
    if not isinstance(value, bool):
        raise errors.InvalidInput(field, 'must be true or false')
    return value


def _text(limit):
    def check(value, field):
        if not isinstance(value, str) or not value or len(value) > limit \
                or not value.isprintable():
            raise errors.InvalidInput(
                field, f'must be printable text of 1..{limit} characters')
        return value
    return check


def _host(value, field):
    # The same rule as [DEFAULT] host (checked at daemon start).
    return names.host_name(value, field)


def _tags(value, field):
    if not isinstance(value, list) or len(value) > 32:
        raise errors.InvalidInput(field, 'must be a list of at most 32 tags')
    return [names.tag(t, f'{field}[{i}]') for i, t in enumerate(value)]


def _mode(value, field):
    if value not in modes.MODES:
        raise errors.InvalidInput(field, f'must be one of '
                                  f'{", ".join(modes.MODES)}')
    return value


def _seconds(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= 600:
        raise errors.InvalidInput(field, 'must be a number of seconds, '
                                  '0..600')
    return float(value)


VG = ('vg', names.vg_name)
LV = ('lv', names.lv_name)
# Fields naming an LV of the request's VG.
LV_FIELDS = ('lv', 'new_name', 'name', 'snapshot', 'src', 'dst')

# op -> (required fields, optional fields)
OPS = {
    'create': ([VG, LV, ('size', names.size)],
               [('tags', _tags), ('multiattach', _bool)]),
    'delete': ([VG, LV], []),
    'extend': ([VG, LV, ('size', names.size)], []),
    'rename': ([VG, LV, ('new_name', names.lv_name)], []),
    'tag': ([VG, LV], [('add', _tags), ('remove', _tags)]),
    'snapshot': ([VG, LV, ('name', names.lv_name), ('size', names.size)],
                 []),
    'snapshot_delete': ([VG, LV], []),
    'revert': ([VG, LV, ('snapshot', names.lv_name)], []),
    # A new LV filled from a volume or a snapshot, on the host where the
    # source (its origin) is active; ``snapshot``: the temporary snapshot
    # of an in-use volume source, taken there.
    'copy': ([VG, ('src', names.lv_name), ('dst', names.lv_name),
              ('size', names.size)], [('snapshot', names.lv_name)]),
    'activate': ([VG, LV], [('host', _host), ('mode', _mode),
                            ('instance', _text(255)), ('wait', _seconds),
                            ('read_only', _bool)]),
    'deactivate': ([VG, LV], [('host', _host)]),
    'refresh': ([VG, LV], [('host', _host)]),
    'show': ([VG, LV], []),
    'list': ([], [VG]),
    'vg_stats': ([VG], []),
    'status': ([], []),
    # Read-only: the hosts of the cluster (membership), for the driver's
    # host-name mapping and its errors.
    'hosts': ([], []),
    'drain': ([], []),
}


def _quoted(name):
    # An unknown name is the caller's text: shown quoted and cut short, so
    # an empty or unprintable one still reads as a field name.
    return repr(name[:40])


def validate(request):
    """(op, args) of a well-formed request, or InvalidInput."""
    if not isinstance(request, dict):
        raise errors.InvalidInput('request', 'must be a JSON object')
    extra = set(request) - {'op', 'args'}
    if extra:
        raise errors.InvalidInput(_quoted(sorted(extra)[0]), 'unknown field')
    op = request.get('op')
    if not isinstance(op, str) or op not in OPS:
        raise errors.InvalidInput('op', f'unknown operation {op!r:.60}')
    args = request.get('args', {})
    if not isinstance(args, dict):
        raise errors.InvalidInput('args', 'must be a JSON object')
    required, optional = OPS[op]
    known = dict(required + optional)
    for field in args:
        if field not in known:
            raise errors.InvalidInput(_quoted(field),
                                      f'unknown field for {op}')
    out = {}
    for field, check in required:
        if field not in args:
            raise errors.InvalidInput(field, f'required by {op}')
        out[field] = check(args[field], field)
    for field, check in optional:
        if field in args and args[field] is not None:
            out[field] = check(args[field], field)
    # LVM limits "vg/lv" as a whole: refused here, not under the VG lock.
    for field in LV_FIELDS:
        if field in out and 'vg' in out:
            names.full_name(out['vg'], out[field], field)
    return op, out
