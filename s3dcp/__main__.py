"""``python -m s3dcp``: the same as the ``s3dcp`` command."""

import sys

from s3dcp._cli import main

sys.exit(main())
