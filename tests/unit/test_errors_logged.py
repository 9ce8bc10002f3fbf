"""errors.logged: a fault that says why is a warning, a bug a traceback;
neither leaves the block's caller."""
import logging

from coordinator import errors

LOG = logging.getLogger('test.logged')


def test_a_coord_error_is_a_warning_without_traceback(caplog):
    with caplog.at_level(logging.WARNING, logger='test.logged'):
        with errors.logged(LOG, 'refresh failed'):
            raise errors.EtcdUnavailable('etcd at 127.0.0.1:1 away')
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING and rec.exc_info is None
    assert rec.getMessage() == 'refresh failed: etcd at 127.0.0.1:1 away'


def test_anything_else_is_logged_with_its_traceback(caplog):
    with caplog.at_level(logging.WARNING, logger='test.logged'):
        with errors.logged(LOG, 'refresh failed'):
            {}['missing']
    [rec] = caplog.records
    assert rec.levelno == logging.ERROR and rec.exc_info[0] is KeyError
    assert rec.getMessage() == 'refresh failed'


def test_a_block_that_succeeds_logs_nothing(caplog):
    done = []
    with caplog.at_level(logging.DEBUG, logger='test.logged'):
        with errors.logged(LOG, 'refresh failed'):
            done.append(1)
    assert done == [1] and caplog.records == []
