"""Which insightface the face-ID tests ran with: the one pip resolves today, and, in the suite that
``tests/dev_env.py`` runs with ``CONSISTENTID_INSIGHTFACE``, the one many existing installs have."""
import os

import insightface


def test_insightface_is_the_version_under_test():
    expected = os.environ.get("CONSISTENTID_INSIGHTFACE")
    if expected:
        assert insightface.__version__ == expected
    else:
        # pip resolves the pure-Python 2.x line today (the wheel Windows installs without build tools).
        assert int(insightface.__version__.split(".")[0]) >= 2
