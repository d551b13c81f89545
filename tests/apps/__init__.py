"""Small Dramatiq apps that the tests run in real worker processes.

They read their Redis URL and key namespace from ``WT_TEST_*`` variables
(never ``WATCHTOWER_*``, which Watchtower's settings would reject), so that
every test talks to a namespace of its own.
"""
