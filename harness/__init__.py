"""The measuring machine: suites -> cases -> runner -> measurements -> results -> report / gate."""
