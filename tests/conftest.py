import os
import sys

# `support` (the differential-test helpers) lives beside this file. cmp itself
# is imported from the installed package, never from the source tree.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest

# .ci/sanitize runs the suite on an ASan + UBSan build with CMP_SANITIZE=1 set. A test that
# only makes sense without a sanitizer says why: @pytest.mark.no_sanitizer('reason').
SANITIZED = os.environ.get('CMP_SANITIZE', '') not in ('', '0')


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'no_sanitizer(reason): skip under the sanitizer run (CMP_SANITIZE=1)')


def pytest_collection_modifyitems(config, items):
    if not SANITIZED:
        return
    for item in items:
        mark = item.get_closest_marker('no_sanitizer')
        if mark is not None:
            reason = mark.args[0] if mark.args else 'needs a build without a sanitizer'
            item.add_marker(pytest.mark.skip(reason='sanitizer run: ' + reason))


# Property tests (hypothesis): a fixed, modest budget in CI ('ci', the default); a developer's
# longer run with HYPOTHESIS_PROFILE=dev, whose failing examples are kept in build/hypothesis.
try:
    import hypothesis
except ImportError:
    pass
else:
    hypothesis.settings.register_profile(
        'ci', max_examples=25, deadline=None, derandomize=True, database=None,
        suppress_health_check=[hypothesis.HealthCheck.too_slow,
                               hypothesis.HealthCheck.data_too_large])
    hypothesis.settings.register_profile(
        'dev', max_examples=500, deadline=None,
        database=hypothesis.database.DirectoryBasedExampleDatabase(
            os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'build', 'hypothesis')),
        suppress_health_check=[hypothesis.HealthCheck.too_slow])
    hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))
