"""``python -m tf_cnnvis``: the same as the ``tf-cnnvis`` command."""

from tf_cnnvis.cli import console

console()
