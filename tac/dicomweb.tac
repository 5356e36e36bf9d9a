# twistd -ny tac/dicomweb.tac
#
# The same service as `twistd dicomweb`, configured from the environment
# (DICOMWEB_PORT, DICOMWEB_DATA_DIR, DICOMWEB_BASE_URL, ... one per option),
# a TOML file named by DICOMWEB_CONFIG, and/or DICOMWEB_ARGS holding
# command-line options (e.g. DICOMWEB_ARGS="--port 5985 --data-dir /srv/dicom").
import os
import shlex

from twisted.application import service

from dicomweb.tap import Options, makeService

options = Options()
options.parseOptions(shlex.split(os.environ.get("DICOMWEB_ARGS", "")))
application = service.Application("dicomweb")
makeService(options).setServiceParent(application)
