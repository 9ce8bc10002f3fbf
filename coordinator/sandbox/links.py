"""The device links a sandbox daemon makes: ``<dev dir>/<vg>/<lv>``."""
import os


def device_links(root):
    """(vg, lv, target) of each link under ``root``; a link removed while
    it is read is skipped: gone, it maps nothing."""
    for vg in listdir(root):
        for lv in listdir(os.path.join(root, vg)):
            try:
                # strict: realpath would raise from readlink anyway, or
                # return the bare path of a link already gone.
                target = os.path.realpath(os.path.join(root, vg, lv),
                                          strict=True)
            except OSError:
                continue
            yield vg, lv, target


def listdir(path):
    """os.listdir, or [] where ``path`` is gone or unreadable."""
    try:
        return os.listdir(path)
    except OSError:
        return []
