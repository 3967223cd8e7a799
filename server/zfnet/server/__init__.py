import logging as _logging

from zfnet.server import logsafe as _logsafe

_logsafe.install(_logging.getLogger("zfnet.server"))
