import os
import sys

# `support` (the differential-test helpers) lives beside this file. cmp itself
# is imported from the installed package, never from the source tree.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
