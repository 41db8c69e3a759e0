"""Measuring one case: the metric table (metrics) and the measurements that fill it (stages), built on
timing, memory, flops and fidelity."""
