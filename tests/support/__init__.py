"""One harness for tests and benchmarks: real instances (`instances`), fake peripherals and sinks (`fakes`),
network namespaces (`netns`), and the scripts tests spawn (`fake_peripheral`, `multihost_peer`, `crasher`).

Imported as a package from the repository root: pytest puts the root on the path (pyproject `pythonpath`),
and benchmarks run as modules from it (`python -m bench.router_bench`).
"""
