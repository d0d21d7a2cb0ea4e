"""``python -m tf_cnnvis``: the same as the ``tf-cnnvis`` command."""

import sys

from tf_cnnvis.cli import main

sys.exit(main())
