"""The tempest.test_plugins entry point of lvmcoord."""
import os

from tempest import config
from tempest.test_discover import plugins

from lvmcoord_tempest_plugin import config as lvmcoord_config


class LvmcoordTempestPlugin(plugins.TempestPlugin):

    def load_tests(self):
        base_path = os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))
        test_dir = os.path.join(base_path, 'lvmcoord_tempest_plugin', 'tests')
        return test_dir, base_path

    def register_opts(self, conf):
        conf.register_opt(lvmcoord_config.service_option,
                          group='service_available')
        config.register_opt_group(conf, lvmcoord_config.lvmcoord_group,
                                  lvmcoord_config.LvmcoordGroup)

    def get_opt_lists(self):
        return [
            (lvmcoord_config.lvmcoord_group.name,
             lvmcoord_config.LvmcoordGroup),
            ('service_available', [lvmcoord_config.service_option]),
        ]
