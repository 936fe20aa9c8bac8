"""Model builders around the Hub files: the tiny offline models and tokenizers of the tests and the demo (`tiny`)."""
