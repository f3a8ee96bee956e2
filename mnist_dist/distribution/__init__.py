"""The distribution: the strategy and its devices, the cluster's workers
(stopping together, a lost one as one line) and the signals that stop them."""
