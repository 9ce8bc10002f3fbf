"""The lease engine against a real etcd, with several processes."""
import signal
import threading
import time

import pytest

from coordinator import errors
from coordinator.engine import etcd as etcdlib
from coordinator.engine.core import Engine

_OPENED = []


def engine(endpoints, host, ttl=3, grace=1.0, **kw):
    etcd = etcdlib.Etcd(endpoints, timeout=2.0, retry_window=20.0)
    e = Engine(etcd, host, 'test', ttl=ttl, grace=grace, **kw).open()
    _OPENED.append(e)
    return e


@pytest.fixture(autouse=True)
def _close_engines():
    """Every engine a test opened is closed after it, even on failure:
    its session keepalive thread must not outlive the test's etcd."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def intervals(actors):
    """Every (enter, exit, host) critical section the actors logged."""
    out = []
    for a in actors:
        enters = a.events('enter')
        exits = {e['round']: e['t'] for e in a.events('exit')}
        out += [(e['t'], exits[e['round']], a.host) for e in enters
                if e['round'] in exits]
    return sorted(out)


def assert_no_overlap(sections):
    pairs = zip(sections, sections[1:], strict=False)
    for (s1, e1, h1), (s2, e2, h2) in pairs:
        assert e1 <= s2, f'{h1} [{s1}, {e1}] overlaps {h2} [{s2}, {e2}]'


def test_mutual_exclusion_across_processes(etcd_server, actors):
    eps = etcd_server.endpoints
    procs = [actors(eps, f'h{i}', 'lock', '--vg', 'vg0', '--rounds', '8',
                    '--hold', '0.01') for i in range(4)]
    for p in procs:
        p.wait_event('done', timeout=60)
    sections = intervals(procs)
    assert len(sections) == 32
    assert_no_overlap(sections)


def test_threads_of_one_process_exclude_each_other(etcd_server):
    eng = engine(etcd_server.endpoints, 'alpha')
    sections = []

    def contend(name):
        for _ in range(15):
            hold = eng.vglock('vg0').acquire(name, timeout=30)
            start = time.monotonic()
            time.sleep(0.002)
            sections.append((start, time.monotonic(), name))
            hold.release()
    threads = [threading.Thread(target=contend, args=(f't{i}',))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sections) == 60
    assert_no_overlap(sorted(sections))
    assert eng.vglock('vg0').queue() == []
    eng.close(revoke=True)


def test_resumed_session_keeps_the_lock_of_a_live_process(etcd_server,
                                                          tmp_path):
    # A daemon's session worker restarting resumes the session its other
    # workers share: their queue keys stay, a dead process's go.
    state = str(tmp_path / 'session.json')
    first = engine(etcd_server.endpoints, 'alpha', ttl=10, state_file=state)
    hold = first.vglock('vg0').acquire('lvcreate vg0/x')
    dead = f'{first.keys.vg_lock("vg0")}{first.session.id:016x}-7ffffffe-ab'
    first.etcd.put(dead, {'host': 'alpha'}, lease=first.session.id)
    older = f'{first.keys.vg_lock("vg0")}{first.session.id:016x}-0123abcd'
    first.etcd.put(older, {'host': 'alpha'}, lease=first.session.id)
    again = engine(etcd_server.endpoints, 'alpha', ttl=10, state_file=state)
    assert again.session.resumed
    assert [k['key'] for k in again.vglock('vg0').queue()] == [hold.key]
    hold.check()
    hold.release()
    first.close(revoke=True)


def test_fifo_order_of_waiters(etcd_server, actors, tmp_path):
    eps = etcd_server.endpoints
    gate = str(tmp_path / 'gate')
    holder = actors(eps, 'holder', 'lock', '--vg', 'vg0', '--until-file',
                    gate)
    holder.wait_event('enter')
    watcher = engine(eps, 'observer')
    lock = watcher.vglock('vg0')
    order = []
    for i in range(4):
        w = actors(eps, f'w{i}', 'lock', '--vg', 'vg0')
        # Start the next waiter only once this one is queued in etcd.
        deadline = time.monotonic() + 20
        while len(lock.queue()) < i + 2:
            assert time.monotonic() < deadline, 'waiter never queued'
            time.sleep(0.01)
        order.append(w)
    assert [q['host'] for q in lock.queue()] == \
        ['holder', 'w0', 'w1', 'w2', 'w3']
    open(gate, 'w').close()
    for w in order:
        w.wait_event('done')
    got = sorted(order, key=lambda w: w.wait_event('enter')['t'])
    assert [w.host for w in got] == ['w0', 'w1', 'w2', 'w3']
    assert_no_overlap(intervals([holder] + order))
    watcher.close(revoke=True)


def test_lock_timeout_names_holder(etcd_server):
    a = engine(etcd_server.endpoints, 'alpha')
    b = engine(etcd_server.endpoints, 'beta')
    with a.vglock('vg0').acquire('lvcreate vg0/x'):
        with pytest.raises(errors.LockTimeout) as exc:
            b.vglock('vg0').acquire('lvremove vg0/y', timeout=0.5)
    assert 'held by alpha' in str(exc.value)
    assert 'lvcreate vg0/x' in str(exc.value)
    # The timed-out waiter left nothing queued behind.
    assert b.vglock('vg0').queue() == []
    a.close(revoke=True)
    b.close(revoke=True)


def test_sigstopped_holder_loses_session_and_lock(etcd_server, actors,
                                                  tmp_path):
    eps = etcd_server.endpoints
    gate = str(tmp_path / 'never')
    holder = actors(eps, 'sleepy', 'lock', '--vg', 'vg0', '--until-file',
                    gate, ttl=2)
    holder.wait_event('enter')
    holder.signal(signal.SIGSTOP)
    other = engine(eps, 'other')
    # Blocks until etcd expires the stopped holder's session (TTL 2s).
    with other.vglock('vg0').acquire('takeover', timeout=15) as hold:
        assert hold.revision > 0
        holder.signal(signal.SIGCONT)
        lost = holder.wait_event('lost', timeout=10)
    assert lost['session'] == holder.events('session')[0]['session']
    other.close(revoke=True)


def test_restart_within_ttl_resumes_session(etcd_server, actors, tmp_path):
    eps = etcd_server.endpoints
    state = str(tmp_path / 'session.json')
    # TTL 10: a restart on a loaded 2-core machine takes several seconds.
    first = actors(eps, 'compute-1', 'lease', '--vg', 'vg0', '--lv', 'v1',
                   ttl=10, state_file=state)
    granted = first.wait_event('granted')
    contender = actors(eps, 'compute-2', 'lease', '--vg', 'vg0', '--lv',
                       'v1', '--wait', '25', ttl=10)
    contender.wait_event('session')
    first.signal(signal.SIGKILL)
    first.proc.wait()
    time.sleep(1.0)
    again = actors(eps, 'compute-1', 'lease', '--vg', 'vg0', '--lv', 'v1',
                   ttl=10, state_file=state)
    session = again.wait_event('session')
    assert session['resumed'] is True
    assert session['session'] == first.events('session')[0]['session']
    # Re-grant to the same holder is idempotent: same fencing token.
    assert again.wait_event('granted')['token'] == granted['token']
    # The contender waited the whole time (25s, 2.5 TTLs), never got in.
    refused = contender.wait_event('refused', timeout=40)
    assert refused['code'] == 'lease-conflict'
    assert 'compute-1' in refused['error']
    assert contender.events('granted') == []


def test_migration_shared_and_tokens(etcd_server):
    eps = etcd_server.endpoints
    h1, h2, h3 = (engine(eps, f'h{i}') for i in (1, 2, 3))
    tokens = []
    g = h1.leases.grant('vg0', 'v1', 'exclusive', 'inst-A')
    tokens.append(g.token)
    with pytest.raises(errors.LeaseConflict, match='held by h1'):
        h2.leases.grant('vg0', 'v1', 'exclusive', 'inst-A')
    with pytest.raises(errors.LeaseConflict, match='same instance'):
        h2.leases.grant('vg0', 'v1', 'migration', 'inst-B')
    with pytest.raises(errors.LeaseConflict, match='held by h1'):
        h2.leases.grant('vg0', 'v1', 'shared')
    g2 = h2.leases.grant('vg0', 'v1', 'migration', 'inst-A')
    tokens.append(g2.token)
    assert {(h.host, h.mode) for h in h1.leases.holders('vg0', 'v1')} == \
        {('h1', 'migration'), ('h2', 'migration')}
    with pytest.raises(errors.LeaseConflict, match='exactly two'):
        h3.leases.grant('vg0', 'v1', 'migration', 'inst-A')
    # Either side releasing ends the migration: the other is exclusive.
    assert h1.leases.release('vg0', 'v1')
    assert [(h.host, h.mode) for h in h3.leases.holders('vg0', 'v1')] == \
        [('h2', 'exclusive')]
    # Idempotent re-grant keeps the token.
    assert h2.leases.grant('vg0', 'v1', 'exclusive', 'inst-A').token == \
        g2.token
    h2.leases.release('vg0', 'v1')
    for host in (h1, h2, h3):
        tokens.append(host.leases.grant('vg0', 'v2', 'shared').token)
    tokens.append(h3.leases.grant('vg0', 'v9', 'exclusive').token)
    with pytest.raises(errors.LeaseConflict, match='every holder'):
        h1.leases.grant('vg0', 'v9', 'shared')
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    for h in (h1, h2, h3):
        h.close(revoke=True)
