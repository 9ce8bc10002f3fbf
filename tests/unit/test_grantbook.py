"""GrantBook on a real filesystem: two slots written in turn, a torn one
never read, the single file of earlier releases read until replaced."""
import fcntl
import json
import multiprocessing
import os
import signal
import threading

from coordinator.daemon import grantbook


def _book(tmp_path):
    return grantbook.GrantBook(str(tmp_path), 'c1')


def test_records_round_trip_and_updates_merge(tmp_path):
    book = _book(tmp_path)
    book.put('vg', 'a', durable=False, state=grantbook.ACTIVATING, token=5)
    book.put('vg', 'a', state=grantbook.ACTIVE, path='/dev/x')
    book.put('vg', 'b', token=7)
    assert book.get('vg', 'a') == {'state': grantbook.ACTIVE, 'token': 5,
                                   'path': '/dev/x'}
    book.mark_fenced([('vg', 'a'), ('vg', 'gone')])
    assert book.get('vg', 'a')['fenced'] is True
    book.unmark_fenced('vg', 'a')
    assert 'fenced' not in book.get('vg', 'a')
    book.drop('vg', 'b')
    assert set(grantbook.GrantBook(str(tmp_path), 'c1').all()) == \
        {('vg', 'a')}


def _slot_of(book, gen):
    """The path of the slot holding generation ``gen`` (whole or not)."""
    return next(path for path in book.slots
                if grantbook._slot(path)[1] == gen)


def test_writes_go_round_the_slots(tmp_path):
    book = _book(tmp_path)
    for token in (1, 2, 3, 4):
        book.put('vg', 'a', token=token)
    slots = [grantbook._slot(path) for path in book.slots]
    # Each synced write goes to the oldest slot; the fourth over the first.
    assert [gen for _, gen, _ in slots] == [4, 2, 3]
    assert [json.loads(body)['vg/a']['token'] for body, _, _ in slots] == \
        [4, 2, 3]


def test_a_write_never_goes_over_the_newest_or_the_synced_slot(tmp_path):
    book = _book(tmp_path)
    book.put('vg', 'a', token=1)                      # synced
    for token in range(2, 8):                         # not synced
        book.put('vg', 'a', durable=False, token=token)
        slots = [grantbook._slot(path) for path in book.slots]
        assert 1 in [gen for _, gen, _ in slots]      # the synced one
        assert token - 1 in [gen for _, gen, _ in slots]  # the one before
        assert all(synced == 1 for _, gen, synced in slots
                   if gen and gen > 1)


def test_a_write_torn_by_a_kill_loses_only_itself(tmp_path):
    # SIGKILL ends a write of several pages part way (no power loss).
    book = _book(tmp_path)
    book.put('vg', 'a', token=1)                      # synced
    book.put('vg', 'b', durable=False, token=2)
    book.put('vg', 'c', durable=False, token=3, pad='x' * 20000)
    torn = _slot_of(book, 3)
    with open(torn, 'r+b') as f:
        f.seek(8192)
        f.write(b'\0' * 4096)
    assert set(book.all()) == {('vg', 'a'), ('vg', 'b')}


def test_a_torn_slot_leaves_the_previous_book(tmp_path):
    book = _book(tmp_path)
    book.put('vg', 'a', token=1)
    book.put('vg', 'a', token=2)
    # Power lost mid-write of generation 3: half its bytes.
    book.put('vg', 'a', token=3)
    torn = _slot_of(book, 3)
    with open(torn, 'rb') as f:
        whole = f.read()
    with open(torn, 'r+b') as f:
        f.write(whole[:len(whole) // 2] + b'\0' * (len(whole) // 2))
    assert book.get('vg', 'a')['token'] == 2
    # Nothing older comes back, and the torn slot is written over in turn.
    book.put('vg', 'b', token=4)
    book.put('vg', 'b', token=5)
    assert book.get('vg', 'a')['token'] == 2
    assert book.get('vg', 'b')['token'] == 5
    assert all(grantbook._slot(path)[0] is not None for path in book.slots)


def _snapshot(book):
    out = []
    for path in book.slots:
        try:
            with open(path, 'rb') as f:
                out.append(f.read())
        except FileNotFoundError:
            out.append(b'')
    return out


def _lose_power(book, synced):
    """Tear every slot written since the ``synced`` snapshot."""
    for path, before, now in zip(book.slots, synced, _snapshot(book),
                                 strict=True):
        if now != before:
            with open(path, 'r+b') as f:
                f.write(b'\0' * (len(now) // 2))


def test_a_power_loss_undoes_only_the_writes_not_synced(tmp_path):
    book = _book(tmp_path)
    book.put('vg', 'a', token=1)
    book.put('vg', 'a', token=2, state=grantbook.ACTIVE)   # synced
    synced = _snapshot(book)
    # Two activations record themselves without a sync.
    book.put('vg', 'b', durable=False, token=3)
    book.put('vg', 'c', durable=False, token=4)
    # Power lost: any slot written since the sync may be torn.
    _lose_power(book, synced)
    after = grantbook.GrantBook(str(tmp_path), 'c1')
    assert after.get('vg', 'a') == {'token': 2, 'state': grantbook.ACTIVE}
    # A synced write after unsynced ones leaves the synced one whole too.
    book = after
    book.put('vg', 'b', durable=False, token=5)
    book.put('vg', 'a', token=6)                           # synced
    synced = _snapshot(book)
    book.put('vg', 'b', durable=False, token=7)
    _lose_power(book, synced)
    assert book.get('vg', 'a')['token'] == 6
    assert book.get('vg', 'b')['token'] == 5


def test_an_upgrade_whose_first_write_died_reads_the_single_file(
        tmp_path):
    book = _book(tmp_path)
    with open(book.path, 'w') as f:
        json.dump({'vg/old': {'token': 9, 'state': grantbook.ACTIVE}}, f)
    # Killed between creating slot 0 and writing it.
    open(book.slots[0], 'wb').close()
    assert book.get('vg', 'old')['token'] == 9
    book.put('vg', 'new', token=10)
    assert set(book.all()) == {('vg', 'old'), ('vg', 'new')}
    assert not os.path.exists(book.path)


def test_both_slots_unreadable_is_an_empty_book(tmp_path):
    book = _book(tmp_path)
    book.put('vg', 'a', token=1)
    book.put('vg', 'a', token=2)
    for path in book.slots:
        with open(path, 'wb') as f:
            f.write(b'edited by hand')
    assert book.all() == {}
    book.put('vg', 'c', token=3)
    assert book.all() == {('vg', 'c'): {'token': 3}}


def _hold_lock_frozen(lock_path, ready):
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(ready, b'x')
    os.kill(os.getpid(), signal.SIGSTOP)


def test_a_writer_frozen_under_the_lock_does_not_stop_a_reader(tmp_path):
    # A slot torn for good sends a lock-free reader to the lock; a writer
    # stopped while holding it (SIGSTOP, D state) must not stop the
    # fencer, which reads the book before it fences.
    book = _book(tmp_path)
    book.put('vg', 'a', token=1)
    book.put('vg', 'a', token=2)
    with open(book.slots[0], 'r+b') as f:
        f.seek(40)
        f.write(b'\0' * 8)
    ready_r, ready_w = os.pipe()
    proc = multiprocessing.get_context('fork').Process(
        target=_hold_lock_frozen, args=(book._lock_path, ready_w))
    proc.start()
    try:
        assert os.read(ready_r, 1) == b'x'
        seen = []
        reader = threading.Thread(target=lambda: seen.append(book.all()),
                                  daemon=True)
        reader.start()
        reader.join(30)
        assert not reader.is_alive(), 'the reader waits on a frozen writer'
        assert seen == [{('vg', 'a'): {'token': 2}}]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        os.close(ready_r)
        os.close(ready_w)
    # The writer gone, the next write takes the lock.
    book.put('vg', 'a', token=3)
    assert book.get('vg', 'a') == {'token': 3}


def test_the_single_file_of_earlier_releases_is_read_then_replaced(
        tmp_path):
    book = _book(tmp_path)
    with open(book.path, 'w') as f:
        json.dump({'vg/old': {'token': 9, 'state': grantbook.ACTIVE}}, f)
    assert book.get('vg', 'old')['token'] == 9
    book.put('vg', 'new', token=10)
    assert not os.path.exists(book.path)
    assert set(book.all()) == {('vg', 'old'), ('vg', 'new')}


def _writer(path, count):
    book = grantbook.GrantBook(path, 'c1')
    for i in range(count):
        # Bodies of varying length: a torn read would fail to parse.
        book.put('vg', f'lv{i % 7}', durable=False, token=i,
                 pad='x' * (i % 50 * 200))


def test_a_reader_never_sees_a_partial_book(tmp_path):
    # Lock-free readers (the grant watch, proofs) while another process
    # writes bodies over several pages.
    book = _book(tmp_path)
    book.put('vg', 'lv0', token=-1)
    count = 2000
    proc = multiprocessing.get_context('fork').Process(
        target=_writer, args=(str(tmp_path), count))
    proc.start()
    try:
        last, reads = -1, 0
        while proc.is_alive() or reads == 0:
            seen = book.all()
            reads += 1
            assert seen, 'a reader saw an empty book'
            tokens = [r['token'] for r in seen.values()]
            assert max(tokens) >= last, 'the book went back in time'
            last = max(tokens)
    finally:
        proc.join(60)
    assert proc.exitcode == 0
    assert max(r['token'] for r in book.all().values()) == count - 1


def test_quiesce_waits_for_every_activation_on_the_gate(tmp_path):
    # Two activations in flight (shared), then none: reconcile's barrier
    # passes only once both let go, and lets the next one in at once.
    book = grantbook.GrantBook(str(tmp_path))
    with book.activating(), book.activating():
        assert book.quiesce(0.05) is False
    assert book.quiesce(0.05) is True
    with book.activating():
        pass


def test_a_made_device_is_recorded_with_its_dm_uuid(tmp_path):
    # The fencer addresses it by that, whatever it is renamed to by hand.
    class Backend:
        def admit(self, vg, lv):
            pass

        def dm_uuid(self, vg, lv):
            return 'LVM-' + 'v' * 32 + 'l' * 32
    book = grantbook.GrantBook(str(tmp_path))
    book.put('vg', 'lv', state=grantbook.ACTIVATING, token=1, uuid='u')
    assert grantbook.made(book, Backend(), 'vg', 'lv', '/dev/vg/lv')
    assert book.get('vg', 'lv')['dm_uuid'] == 'LVM-' + 'v' * 32 + 'l' * 32
