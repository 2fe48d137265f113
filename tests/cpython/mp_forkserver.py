"""CPython's multiprocessing tests for the 'forkserver' start method, as its test_multiprocessing_forkserver does."""
from test._test_multiprocessing import install_tests_in_module_dict

install_tests_in_module_dict(globals(), 'forkserver')
