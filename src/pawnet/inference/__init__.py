"""Using a trained model: the bundle (`bundle`), the one way to build a `Predictor` and
label photos (`predictor`), how predictions are written (`output`), where the model runs
(`runtimes`, converted by `convert`), `pawnet export` (`export`), and `pawnet watch`, which
sorts an inbox exactly once (`watch`, with its `journal`)."""
