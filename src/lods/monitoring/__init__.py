"""Read models of patient monitoring: the ward board and the per-ward fall figures."""
