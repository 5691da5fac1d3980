"""The papers' analyses of a trained model: `pipeline analyze` and its figures."""
