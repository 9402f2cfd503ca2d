"""Experimental strategies (STYLE item 12): new methods, not yet validated by a measured
comparison. They have property tests; promote one out of this package once it has beaten a tuned
uniform mix in a reported comparison.
"""
