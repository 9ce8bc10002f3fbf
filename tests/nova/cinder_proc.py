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


# A second backend of the same driver, VG, daemon and options: a
# migration's destination (Cinder refuses the volume's own host). The
# scheduler puts new volumes on either.
BACKEND2 = 'lvmcoord2'
HOST2 = f'volume-1@{BACKEND2}'


def hear():
    """One JSON line from stdin (None at its end), waited on without
    blocking eventlet's hub (the services run in green threads of this
    one)."""
    while not select.select([sys.stdin], [], [], 0)[0]:
        time.sleep(0.2)
    line = sys.stdin.readline()
    return json.loads(line) if line.strip() else None


def serve_case(spec):
    """test_cinder's Cinder API case with one test: print the API's URL,
    serve until stdin closes; a line ``{"nova": URL, "token": T}`` points
    Cinder's Nova client at Nova's API."""
    base = test_cinder.api_case(spec)

    class CinderServe(base):
        def _get_flags(self):
            # Registers the [nova] options.
            from cinder.compute import nova  # noqa: F401
            from cinder.volume import configuration
            from cinder.volume import driver as cinder_driver
            from cinder.volume import manager
            from keystoneauth1 import loading as ks_loading
            from oslo_config import cfg

            from driver import options
            f = super()._get_flags()
            # Multiattach volumes (their type's extra spec) activate in
            # shared mode on each attached host; the others stay
            # exclusive.
            f['lvmcoord_enable_multiattach'] = {'v': True,
                                                'g': test_cinder.BACKEND}
            # The second backend: the first's options in its own section.
            options.register(configuration.Configuration(
                manager.volume_backend_opts + cinder_driver.volume_opts,
                config_group=BACKEND2))
            for name in ('volume_driver', 'lvmcoord_socket_path',
                         'volume_group', 'lvmcoord_enable_multiattach'):
                f[name + '@2'] = dict(f[name], g=BACKEND2)
            f['volume_backend_name@2'] = {'v': BACKEND2, 'g': BACKEND2}
            # Cinder's Nova client (cinder/compute/nova.py, privileged:
            # auth from [nova]): admin_token, its endpoint set once Nova
            # is up.
            loader = ks_loading.get_plugin_loader('admin_token')
            cfg.CONF.register_opts(
                [o._to_oslo_opt() for o in loader.get_options()
                 if o.dest not in cfg.CONF.nova], group='nova')
            f['auth_type@nova'] = {'v': 'admin_token', 'g': 'nova'}
            return f

        def override_config(self, name, override, group=None):
            # Keys of the flags dict are unique: 'name@2' is a name for
            # another group.
            return super().override_config(name.split('@')[0], override,
                                           group)

        def start_service(self, name, host=None, **kwargs):
            if kwargs.get('service_name') == BACKEND2:
                return super(base, self).start_service(name, host=host,
                                                       **kwargs)
            return super().start_service(name, host=host, **kwargs)

        def setUp(self):
            super().setUp()
            self.start_service('volume', host=HOST2, service_name=BACKEND2)
            states = self.scheduler.manager.driver.host_manager.service_states
            deadline = time.monotonic() + 30
            while HOST2 not in states:
                self.assertLess(time.monotonic(), deadline,
                                f'no capabilities from {HOST2}')
                time.sleep(0.1)
            # The harness keeps its log to show on failure: this
            # process's stderr (the tier's cinder.log) gets it as it goes.
            log_to_stderr()

        def test_serve(self):
            print(json.dumps({'url': f'http://{self.osapi.host}:'
                                     f'{self.osapi.port}'}), flush=True)
            while (cmd := hear()) is not None:
                self.override_config('endpoint', cmd['nova'], 'nova')
                self.override_config('token', cmd['token'], 'nova')
                print(json.dumps({'ok': True}), flush=True)

    return CinderServe


def main():
    """Serve; exit status 0 if the harness set up and tore down clean."""
    import unittest
    case = serve_case(json.loads(os.environ[test_cinder.SPEC_ENV]))
    result = unittest.TextTestRunner(verbosity=2).run(case('test_serve'))
    return 0 if result.wasSuccessful() else 1


if __name__ == '__main__':
    sys.exit(main())
