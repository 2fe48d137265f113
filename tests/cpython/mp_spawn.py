"""CPython's multiprocessing tests for the 'spawn' start method, as its test_multiprocessing_spawn does."""
from test._test_multiprocessing import install_tests_in_module_dict

install_tests_in_module_dict(globals(), 'spawn')
