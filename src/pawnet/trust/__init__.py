"""The numbers behind `unsure` and `neither`, in NumPy: calibrated probabilities
(`calibration`), the out-of-distribution score (`ood`) and the rules that turn them into
an answer and its reason (`verdict`). `pawnet.training.trust` fits them."""
