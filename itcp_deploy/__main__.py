"""``python -m itcp_deploy ...``: the ``itcp-deploy`` command, for a Python that has no console script on its PATH
(or under ``python -m cProfile -m itcp_deploy``)."""

import sys

from itcp_deploy.cli import main

sys.exit(main())
