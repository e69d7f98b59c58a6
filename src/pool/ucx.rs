//! The UCX data plane (feature `ucx`).
