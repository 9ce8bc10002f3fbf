"""Cinder's real API, scheduler and volume service with LvmcoordDriver
(tests/functional/test_cinder.py's harness) serving until stdin closes:
the Nova tier's Cinder process."""
import json
import os
import select
import sys
import time

from tests.functional import test_cinder


def log_to_stderr():
    """INFO and up of every logger, to stderr."""
    import logging
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(
        '%(asctime)s %(levelname)s [%(name)s] %(message)s'))
    logging.getLogger().addHandler(handler)


def serve_case(spec):
    """test_cinder's Cinder API case with one test: print the API's URL,
    serve until stdin closes."""
    base = test_cinder.api_case(spec)

    class CinderServe(base):
        def _get_flags(self):
            # Multiattach volumes (their type's extra spec) activate in
            # shared mode on each attached host; the others stay
            # exclusive.
            f = super()._get_flags()
            f['lvmcoord_enable_multiattach'] = {'v': True,
                                                'g': test_cinder.BACKEND}
            return f

        def setUp(self):
            super().setUp()
            # The harness keeps its log to show on failure: this
            # process's stderr (the tier's cinder.log) gets it as it goes.
            log_to_stderr()

        def test_serve(self):
            print(json.dumps({'url': f'http://{self.osapi.host}:'
                                     f'{self.osapi.port}'}), flush=True)
            # Waited on without blocking eventlet's hub (the services
            # run in green threads of this one).
            while not select.select([sys.stdin], [], [], 0)[0]:
                time.sleep(0.2)

    return CinderServe


def main():
    """Serve; exit status 0 if the harness set up and tore down clean."""
    import unittest
    case = serve_case(json.loads(os.environ[test_cinder.SPEC_ENV]))
    result = unittest.TextTestRunner(verbosity=2).run(case('test_serve'))
    return 0 if result.wasSuccessful() else 1


if __name__ == '__main__':
    sys.exit(main())
