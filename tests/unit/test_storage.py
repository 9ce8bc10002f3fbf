"""The storage fence's parsing and registration logic: sg_persist output
as captured from tgtd (sg3_utils' sg_persist 0.67, two paths, guests g1
and g2 of the real-kernel tier), and a fake LU that behaves as tgtd's
PR code does (spc.c: PREEMPT only, no PREEMPT AND ABORT)."""
import pytest

from coordinator.storage import base
from coordinator.storage import parse
from coordinator.storage import scsi_pr

CAPS = '''Report capabilities response:
  Replace Lost Reservation Capable(RLR_C): 0
  Compatible Reservation Handling(CRH): 0
  Specify Initiator Ports Capable(SIP_C): 0
  All Target Ports Capable(ATP_C): 0
  Persist Through Power Loss Capable(PTPL_C): 0
  Type Mask Valid(TMV): 1
  Allow Commands: 0
  Persist Through Power Loss Active(PTPL_A): 0
    Support indicated in Type mask:
      Write Exclusive, all registrants: 1
      Exclusive Access, registrants only: 1
      Write Exclusive, registrants only: 1
      Exclusive Access: 1
      Write Exclusive: 1
      Exclusive Access, all registrants: 1
'''
NO_KEYS = '  PR generation=0x0, there are NO registered reservation keys\n'
KEYS = '''  PR generation=0x4, 4 registered reservation keys follow:
    0x1111
    0x1111
    0x2222
    0x2222
'''
MPATH_KEYS = '''  PR generation=0x5, \t4 registered reservation keys follow:
    0x1111
    0x3333
    0x2222
    0x2222
'''
NO_RES = '  PR generation=0x0, there is NO reservation held\n'
RES = '''  PR generation=0x4, Reservation follows:
    Key=0x0
    scope: LU_SCOPE,  type: Write Exclusive, all registrants
'''
# tgtd after the holder of an All Registrants reservation was preempted
# (its pr_holder points at freed memory, reused by the next registration).
DANGLING_RES = '''  PR generation=0x7b, Reservation follows:
    Key=0x5b74a250a640facd
    scope: LU_SCOPE,  type: obsolete [0]
'''
WERO_RES = '''  PR generation=0x9, Reservation follows:
    Key=0x5b74a250a640fa6b
    scope: LU_SCOPE,  type: Write Exclusive, registrants only
'''
MPATH_RES = '''  PR generation=0x5, Reservation follows:
   Key = 0x0
  scope = LU_SCOPE, type = Write Exclusive, all registrants
'''


def test_read_keys():
    assert parse.read_keys(NO_KEYS) == (0, [])
    assert parse.read_keys(KEYS) == (4, [0x1111, 0x1111, 0x2222, 0x2222])
    assert parse.read_keys(MPATH_KEYS) == (5, [0x1111, 0x3333, 0x2222,
                                               0x2222])


def test_read_keys_refuses_what_it_does_not_understand():
    # A truncated list is no proof that a key is gone.
    with pytest.raises(ValueError):
        parse.read_keys(KEYS.rsplit('\n', 2)[0])
    with pytest.raises(ValueError):
        parse.read_keys('')
    with pytest.raises(ValueError):
        parse.read_keys('  PR generation=0x1, something else\n')


def test_read_reservation():
    assert parse.read_reservation(NO_RES) == (0, None)
    assert parse.read_reservation(RES) == (4, (0, parse.WE_ALL_REGISTRANTS))
    assert parse.read_reservation(MPATH_RES) == (
        5, (0, parse.WE_ALL_REGISTRANTS))
    assert parse.read_reservation(DANGLING_RES) == (
        0x7b, (0x5b74a250a640facd, 0))
    assert parse.read_reservation(WERO_RES) == (
        9, (0x5b74a250a640fa6b, parse.WE_REGISTRANTS_ONLY))
    with pytest.raises(ValueError):
        parse.read_reservation('  PR generation=0x4, Reservation follows:\n')


def test_capabilities():
    flags, types = parse.capabilities(CAPS)
    assert flags['TMV'] and not flags['PTPL_C']
    assert types == {1, 3, 5, 6, 7, 8}
    with pytest.raises(ValueError):
        parse.capabilities('sg_persist failed: Illegal request')


def test_key_is_the_session():
    assert base.key_for(0x694d8a2b1c3e0f07) == 0x694d8a2b1c3e0f07
    assert parse.key_hex(0x694d8a2b1c3e0f07) == '0x694d8a2b1c3e0f07'
    for bad in (0, -1, 1 << 64):
        with pytest.raises(ValueError):
            base.key_for(bad)


class FakeLU:
    """Registrations per I_T nexus (initiator, path) and one reservation
    (type, holder nexus), as tgtd's spc.c keeps them; sg_persist's argv
    in, (rc, out, err) out. Like tgtd: PREEMPT only (no PREEMPT AND
    ABORT unless ``abort``); preempting the holder of a Registrants Only
    reservation hands it to the preempter, preempting the holder of an
    All Registrants one leaves it dangling (type 0)."""

    NAMES = {5: 'Write Exclusive, registrants only',
             7: 'Write Exclusive, all registrants'}

    def __init__(self, pr=True, abort=False):
        self.pr, self.abort = pr, abort
        self.regs = {}        # (initiator, path) -> key
        self.res = None       # (type, holder nexus, holder key)
        self.gen = 0
        self.calls = []

    def runner(self, initiator):
        def run(argv):
            self.calls.append((initiator, argv))
            return self.run(initiator, argv)
        return run

    def run(self, ini, argv):
        path, args = argv[-1], argv[2:-1]
        nexus = (ini, path)
        if not self.pr:
            return 5, '', 'PR in: command not supported\nIllegal request'
        opts = dict(a.split('=', 1) for a in args if '=' in a)
        rk = int(opts.get('--param-rk', '0'), 16)
        sark = int(opts.get('--param-sark', '0'), 16)
        rtype = int(opts.get('--prout-type', '0'))
        if '--report-capabilities' in args:
            return 0, CAPS, ''
        if '--read-keys' in args:
            if not self.regs:
                return 0, f'  PR generation={self.gen:#x}, there are NO ' \
                    'registered reservation keys\n', ''
            keys = ''.join(f'    {k:#x}\n' for k in self.regs.values())
            return 0, f'  PR generation={self.gen:#x}, {len(self.regs)} ' \
                f'registered reservation keys follow:\n{keys}', ''
        if '--read-reservation' in args:
            if self.res is None:
                return 0, f'  PR generation={self.gen:#x}, there is NO ' \
                    'reservation held\n', ''
            t, _, key = self.res
            name = self.NAMES.get(t, f'obsolete [{t}]')
            shown = 0 if t == 7 else key
            return 0, (f'  PR generation={self.gen:#x}, Reservation '
                       f'follows:\n    Key={shown:#x}\n    scope: LU_SCOPE,'
                       f'  type: {name}\n'), ''
        if '--register' in args:
            if self.regs.get(nexus) != rk:
                return 24, '', 'PR out (Register): Reservation conflict'
            self.regs[nexus] = sark
            self.gen += 1
            return 0, '', ''
        if '--register-ignore' in args:
            self.regs[nexus] = sark
            if self.res and self.res[1] == nexus:
                self.res = (self.res[0], nexus, sark)
            self.gen += 1
            return 0, '', ''
        if '--reserve' in args:
            if self.regs.get(nexus) != rk:
                return 24, '', 'Reservation conflict'
            if self.res is None:
                self.res = (rtype, nexus, rk)
            elif self.res[1] != nexus:
                return 24, '', 'Reservation conflict'
            return 0, '', ''
        if '--preempt-abort' in args and not self.abort:
            return 5, '', 'PR out (Preempt and abort): bad field in cdb'
        if '--preempt' in args or '--preempt-abort' in args:
            if self.regs.get(nexus) != rk or \
                    sark not in self.regs.values():
                return 24, '', 'PR out (Preempt): Reservation conflict'
            if self.res and self.res[0] != 7 and self.res[2] == sark:
                self.res = (rtype, nexus, rk)
            gone = [n for n, k in self.regs.items() if k == sark]
            for n in gone:
                del self.regs[n]
            if self.res and self.res[0] == 7 and self.res[1] in gone:
                # tgtd frees the holder's registration and keeps
                # pointing at it: type 0, whatever key reuses the memory.
                self.res = (0, None, 0)
            self.gen += 1
            return 0, '', ''
        raise AssertionError(argv)

    def write_ok(self, ini, path):
        """Whether a WRITE from this nexus would be let through."""
        return self.res is None or (ini, path) in self.regs


@pytest.fixture
def sysfs(tmp_path):
    """/sys/block/dm-0/slaves/{sda,sdb} and /dev/mapper/mplu -> dm-0."""
    slaves = tmp_path / 'sys' / 'block' / 'dm-0' / 'slaves'
    slaves.mkdir(parents=True)
    for s in ('sda', 'sdb'):
        (slaves / s).touch()
    dev = tmp_path / 'dev'
    dev.mkdir()
    (dev / 'dm-0').touch()
    (dev / 'mplu').symlink_to(dev / 'dm-0')
    return str(tmp_path / 'sys'), str(dev / 'mplu')


def connector(lu, ini, sysfs, rtype='wero'):
    sys_root, mplu = sysfs
    return scsi_pr.ScsiPR([mplu], rtype, lu.runner(ini), sys_root)


def test_paths_of_a_multipath_map(sysfs):
    sys_root, mplu = sysfs
    assert scsi_pr.paths_of(mplu, sys_root) == ['/dev/sda', '/dev/sdb']


def test_register_every_path_and_reserve(sysfs):
    lu = FakeLU()
    a = connector(lu, 'g1', sysfs)
    assert a.register(0xa1) == {'/dev/sda': 'ok', '/dev/sdb': 'ok'}
    assert lu.res == (5, ('g1', '/dev/sda'), 0xa1)
    assert lu.regs == {('g1', '/dev/sda'): 0xa1, ('g1', '/dev/sdb'): 0xa1}
    # Never through a shell: every call is an argv list.
    assert all(isinstance(argv, list) and argv[0] == 'sg_persist'
               for _, argv in lu.calls)
    # A new incarnation's key replaces the old one on each nexus.
    a.register(0xa2)
    assert set(lu.regs.values()) == {0xa2}


def test_preempt_removes_the_victim_and_proves_it(sysfs):
    lu = FakeLU()
    a, b = connector(lu, 'g1', sysfs), connector(lu, 'g2', sysfs)
    a.register(0xa1)
    b.register(0xb1)
    assert lu.write_ok('g1', '/dev/sda')
    assert b.preempt(0xb1, 0xa1) is True
    # tgtd has no PREEMPT AND ABORT: PREEMPT was used, and said so.
    assert b.aborts is False
    assert not lu.write_ok('g1', '/dev/sda')
    assert not lu.write_ok('g1', '/dev/sdb')
    assert lu.write_ok('g2', '/dev/sdb')
    # g1 held the reservation: it is g2's now, still Registrants Only.
    assert b.reservation() == (0xb1, parse.WE_REGISTRANTS_ONLY)
    # g1 comes back with a new key; the reservation stays fencing.
    a.register(0xa2)
    assert b.reservation()[1] == parse.WE_REGISTRANTS_ONLY


def test_all_registrants_on_tgtd_loses_its_type_and_is_not_a_proof(sysfs):
    lu = FakeLU()
    a = connector(lu, 'g1', sysfs, 'wear')
    b = connector(lu, 'g2', sysfs, 'wear')
    a.register(0xa1)
    b.register(0xb1)
    # The holder's key removed: tgtd's reservation dangles (type 0),
    # which proves nothing, and a registration then says why.
    assert b.preempt(0xb1, 0xa1) is False
    with pytest.raises(base.StorageError) as exc:
        a.register(0xa2)
    assert 'no fencing reservation' in str(exc.value)


def test_racing_preempts_are_harmless(sysfs):
    lu = FakeLU(abort=True)
    a, b, c = (connector(lu, g, sysfs) for g in ('g1', 'g2', 'g3'))
    for conn, key in ((a, 0xa1), (b, 0xb1), (c, 0xc1)):
        conn.register(key)
    # b wins, c finds the key gone (RESERVATION CONFLICT): both proven.
    assert b.preempt(0xb1, 0xa1) is True
    assert c.preempt(0xc1, 0xa1) is True
    assert set(lu.regs.values()) == {0xb1, 0xc1}


def test_preempt_unproven_without_a_fencing_reservation(sysfs):
    lu = FakeLU()
    b = connector(lu, 'g2', sysfs)
    lu.regs[('g2', '/dev/sda')] = 0xb1
    lu.regs[('g1', '/dev/sda')] = 0xa1
    # No reservation: an unregistered host can still write.
    assert lu.res is None
    assert b.preempt(0xb1, 0xa1) is False


def test_preempt_refuses_own_or_zero_key(sysfs):
    b = connector(FakeLU(), 'g2', sysfs)
    for victim in (0, 0xb1):
        with pytest.raises(ValueError):
            b.preempt(0xb1, victim)


def test_check_refuses_an_lu_without_pr_naming_it(sysfs):
    a = connector(FakeLU(pr=False), 'g1', sysfs)
    with pytest.raises(base.StorageError) as exc:
        a.check()
    assert sysfs[1] in str(exc.value) and 'persistent reservations' in \
        str(exc.value)
    assert set(connector(FakeLU(), 'g1', sysfs).check()) == {
        '/dev/sda', '/dev/sdb'}


def test_unit_attention_is_retried_once(sysfs):
    sys_root, mplu = sysfs
    answers = [(6, '', 'Unit attention'), (0, NO_KEYS, '')]
    conn = scsi_pr.ScsiPR([mplu], 'wero', lambda argv: answers.pop(0),
                          sys_root)
    assert conn.keys() == []


def test_doctor_reports_pr_support_reservation_and_key_per_path(sysfs):
    import types

    from coordinator.cli import doctor
    from coordinator.engine import keys as keyslib
    lu = FakeLU()
    conn = connector(lu, 'g1', sysfs)
    conn.register(0xa1)
    keys = keyslib.Keys()
    record = types.SimpleNamespace(json=lambda: {'key': '0xa1'})
    ctx = types.SimpleNamespace(
        conf=types.SimpleNamespace(host='g1', fence=types.SimpleNamespace(
            storage='scsi-pr')),
        keys=keys, etcd=types.SimpleNamespace(get=lambda k: record))
    rows = {r[0]: r[1:] for r in doctor.check_storage(ctx, conn)}
    assert rows['storage fence'][0] == 'ok'
    assert rows['reservation'] == (
        'ok', 'type 5 (write exclusive, registrants only)')
    assert rows['key on /dev/sda'] == ('ok', '0xa1 registered')
    # A path whose nexus lost its registration (another host preempted
    # us, a path that was down when we registered) is a failure.
    del lu.regs[('g1', '/dev/sdb')]
    rows = {r[0]: r[1:] for r in doctor.check_storage(ctx, conn)}
    assert rows['key on /dev/sdb'][0] == 'fail'
    rows = doctor.check_storage(ctx, connector(FakeLU(pr=False), 'g1',
                                               sysfs))
    assert rows[0][1] == 'fail' and 'persistent reservations' in rows[0][2]


def test_repair_gives_a_path_back_the_current_key_never_a_removed_one(
        sysfs):
    import types

    from coordinator.storage import fence
    lu = FakeLU()
    conn = connector(lu, 'g1', sysfs)
    session = types.SimpleNamespace(id=0xa1, host='g1')
    sf = fence.StorageFence(conn, None, None, session)
    conn.register(0xa1)
    assert sf.repair(lambda: True) == {}     # every path has it
    # A path that came back as a new nexus (tgtd: a new iSCSI session):
    # the old nexus's registration stays behind, still listed by READ
    # KEYS, the new one has none. Only the path is given the key.
    lu.regs[('g1-old', '/dev/sdb')] = lu.regs.pop(('g1', '/dev/sdb'))
    assert conn.unregistered(0xa1) == ['/dev/sdb']
    assert sf.repair(lambda: False) == {}    # not while the session is stale
    assert sf.repair(lambda: True) == {'/dev/sdb': 'ok'}
    assert lu.regs[('g1', '/dev/sdb')] == 0xa1
    # Preempted: the key is on no nexus; it never comes back.
    lu.regs.clear()
    assert sf.repair(lambda: True) == {}
    assert lu.regs == {}
